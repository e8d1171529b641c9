"""Repository functions for what inference produces: findings, study results and worklist flags.

Like ``db.repository``: each takes the session and never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from db.models import (
    Finding,
    Flag,
    FlagEvent,
    FlagState,
    Instance,
    Job,
    JobState,
    Study,
    StudyResult,
    utcnow,
)

UNFINISHED = (JobState.RECEIVED, JobState.QUEUED, JobState.PROCESSING)


@dataclass(frozen=True)
class NewFinding:
    instance_id: int
    study_id: int
    probability: float
    positive: bool
    threshold: float
    model_name: str
    model_version: str
    device_uid: str
    timings_ms: dict[str, Any]


def save_finding(session: Session, new: NewFinding) -> None:
    """Insert the instance's finding, or replace it (a job run twice gives the same row)."""
    finding = session.scalar(select(Finding).where(Finding.instance_id == new.instance_id))
    if finding is None:
        finding = Finding(instance_id=new.instance_id)
        session.add(finding)
    finding.study_id = new.study_id
    finding.probability = new.probability
    finding.positive = new.positive
    finding.threshold = new.threshold
    finding.model_name = new.model_name
    finding.model_version = new.model_version
    finding.device_uid = new.device_uid
    finding.timings_ms = new.timings_ms
    finding.created_at = utcnow()
    session.flush()


def mark_released(session: Session, association_id: int) -> list[int]:
    """Record that an association was released cleanly; returns the studies it carried."""
    study_ids = list(
        session.scalars(
            select(Instance.study_id).where(Instance.association_id == association_id).distinct()
        )
    )
    if study_ids:
        session.execute(update(Study).where(Study.id.in_(study_ids)).values(released_at=utcnow()))
    return study_ids


def unfinished_jobs(session: Session, study_id: int) -> int:
    """Jobs of the study still waiting for or in inference."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Job)
            .join(Instance)
            .where(Instance.study_id == study_id, Job.state.in_(UNFINISHED))
        )
        or 0
    )


def study_findings(session: Session, study_id: int) -> list[Finding]:
    return list(
        session.scalars(
            select(Finding).where(Finding.study_id == study_id).order_by(Finding.instance_id)
        )
    )


def latest_result(session: Session, study_id: int) -> StudyResult | None:
    return session.scalar(
        select(StudyResult)
        .where(StudyResult.study_id == study_id)
        .order_by(StudyResult.version.desc())
        .limit(1)
    )


def lock_study(session: Session, study_id: int) -> Study | None:
    """The study row, locked until the transaction ends (PostgreSQL; SQLite serialises writers)."""
    return session.get(Study, study_id, with_for_update=True)


def quiet_studies(session: Session, quiet_before: datetime, limit: int = 200) -> list[int]:
    """Studies quiet since ``quiet_before`` whose newest images no result has covered yet."""
    newest_result = (
        select(StudyResult.study_id, func.max(StudyResult.created_at).label("at"))
        .group_by(StudyResult.study_id)
        .subquery()
    )
    rows = session.scalars(
        select(Study.id)
        .outerjoin(newest_result, newest_result.c.study_id == Study.id)
        .where(
            Study.last_received_at < quiet_before,
            or_(newest_result.c.at.is_(None), newest_result.c.at < Study.last_received_at),
            or_(Study.released_at.is_(None), Study.released_at < Study.last_received_at),
        )
        .order_by(Study.last_received_at)
        .limit(limit)
    )
    return list(rows)


def record_report_error(session: Session, result_id: int, error: str) -> None:
    session.execute(
        update(StudyResult).where(StudyResult.id == result_id).values(report_error=error[:512])
    )


def apply_result_to_flag(session: Session, result: StudyResult, priority: str) -> Flag | None:
    """Raise, revise or leave the study's worklist flag for a new result.

    A positive result raises a flag (state ``new``). A later result of the same study revises the
    flag in place: it takes the new probability and sign, and goes back to ``new`` so that a
    person sees the change; it is never deleted. Every change is a ``FlagEvent``.
    """
    flag = session.scalar(select(Flag).where(Flag.study_id == result.study_id))
    now = utcnow()
    if flag is None:
        if not result.positive:
            return None
        flag = Flag(
            study_id=result.study_id,
            study_result_id=result.id,
            positive=True,
            priority=priority,
            reason=_reason(result),
            probability=result.probability,
            model_version=result.model_version,
            state=FlagState.NEW,
            created_at=now,
            updated_at=now,
        )
        session.add(flag)
        session.flush()
        event = "raised"
    else:
        flag.study_result_id = result.id
        flag.positive = result.positive
        flag.priority = priority if result.positive else "none"
        flag.reason = _reason(result)
        flag.probability = result.probability
        flag.model_version = result.model_version
        flag.state = FlagState.NEW
        flag.state_changed_by = None
        flag.state_changed_at = None
        flag.updated_at = now
        event = "revised"
    _record_event(session, flag, event, "cxr-triage")
    return flag


def _record_event(session: Session, flag: Flag, event: str, actor: str) -> None:
    """Append the flag's state as it now is to its history."""
    session.add(
        FlagEvent(
            flag_id=flag.id,
            event=event,
            actor=actor,
            state=flag.state,
            positive=flag.positive,
            probability=flag.probability,
            study_result_id=flag.study_result_id,
            at=flag.updated_at,
        )
    )
    session.flush()


def _reason(result: StudyResult) -> str:
    sign = "suspected pneumonia" if result.positive else "no pneumonia (revised)"
    return (
        f"{sign}: probability {result.probability:.2f} "
        f"(threshold {result.threshold:.2f}, result v{result.version})"
    )


def set_flag_state(session: Session, flag_id: int, state: FlagState, actor: str) -> Flag:
    """A person acknowledges or dismisses a flag; who and when are kept."""
    flag = session.get(Flag, flag_id, with_for_update=True)
    if flag is None:
        raise LookupError(f"no flag {flag_id}")
    now = utcnow()
    flag.state = state
    flag.state_changed_by = actor
    flag.state_changed_at = now
    flag.updated_at = now
    _record_event(session, flag, str(state), actor)
    return flag


def flag_history(session: Session, flag_id: int) -> Sequence[FlagEvent]:
    return list(
        session.scalars(
            select(FlagEvent).where(FlagEvent.flag_id == flag_id).order_by(FlagEvent.id)
        )
    )
