"""Read-only queries behind the worklist, the ops dashboard and the metrics.

The worklist lists every study, newest first, whatever its result: a flag marks a study, it never
hides one or moves it (sorting by priority is the reader's explicit choice, not a default).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import (
    Association,
    Delivery,
    Flag,
    Instance,
    Job,
    Study,
    StudyResult,
)


@dataclass(frozen=True)
class WorklistRow:
    study_id: int
    study_instance_uid: str
    accession_number: str | None
    patient_id: str | None
    patient_name: str | None
    study_date: str | None
    study_description: str | None
    last_received_at: datetime
    instances: int
    result_version: int | None
    probability: float | None
    positive: bool | None
    flag_id: int | None
    flag_state: str | None
    flag_priority: str | None
    flag_reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "last_received_at": self.last_received_at.isoformat()}


def worklist(
    session: Session, limit: int = 100, offset: int = 0, by_priority: bool = False
) -> list[WorklistRow]:
    """Studies newest first (or flagged-new first when ``by_priority``), with result and flag."""
    latest = (
        select(StudyResult.study_id, func.max(StudyResult.version).label("version"))
        .group_by(StudyResult.study_id)
        .subquery()
    )
    counts = (
        select(Instance.study_id, func.count().label("n")).group_by(Instance.study_id).subquery()
    )
    query = (
        select(Study, counts.c.n, StudyResult, Flag)
        .join(counts, counts.c.study_id == Study.id)
        .outerjoin(latest, latest.c.study_id == Study.id)
        .outerjoin(
            StudyResult,
            (StudyResult.study_id == Study.id) & (StudyResult.version == latest.c.version),
        )
        .outerjoin(Flag, Flag.study_id == Study.id)
    )
    order: list[Any] = [Study.last_received_at.desc(), Study.id.desc()]
    if by_priority:
        order.insert(0, ((Flag.state == "new") & Flag.positive.is_(True)).desc())
    rows = session.execute(query.order_by(*order).limit(limit).offset(offset))
    return [
        WorklistRow(
            study_id=study.id,
            study_instance_uid=study.study_instance_uid,
            accession_number=study.accession_number,
            patient_id=study.patient_id,
            patient_name=study.patient_name,
            study_date=study.study_date,
            study_description=study.study_description,
            last_received_at=study.last_received_at,
            instances=int(count),
            result_version=result.version if result else None,
            probability=result.probability if result else None,
            positive=result.positive if result else None,
            flag_id=flag.id if flag else None,
            flag_state=str(flag.state) if flag else None,
            flag_priority=flag.priority if flag else None,
            flag_reason=flag.reason if flag else None,
        )
        for study, count, result, flag in rows
    ]


def count_by(session: Session, column: Any) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).group_by(column))
    return {str(value): int(count) for value, count in rows}


def queue_summary(session: Session) -> dict[str, Any]:
    """What the dashboard and ``/metrics`` show, from the database (so it survives restarts)."""
    return {
        "jobs": count_by(session, Job.state),
        "deliveries": count_by(session, Delivery.outcome),
        "associations": count_by(session, Association.outcome),
        "studies": int(session.scalar(select(func.count()).select_from(Study)) or 0),
        "results": int(session.scalar(select(func.count()).select_from(StudyResult)) or 0),
        "flags": count_by(session, Flag.state),
    }


def recent_associations(session: Session, limit: int = 20) -> list[Association]:
    return list(session.scalars(select(Association).order_by(Association.id.desc()).limit(limit)))


@dataclass(frozen=True)
class Failure:
    what: str
    why: str
    at: datetime


def recent_failures(session: Session, limit: int = 20) -> list[Failure]:
    """The latest failed jobs and failed deliveries, newest first."""
    jobs = session.execute(
        select(Job.id, Job.reason, Job.failed_at)
        .where(Job.state == "failed")
        .order_by(Job.failed_at.desc())
        .limit(limit)
    )
    deliveries = session.execute(
        select(
            Delivery.destination,
            Delivery.kind,
            Delivery.status,
            Delivery.error,
            Delivery.finished_at,
        )
        .where(Delivery.outcome == "failed")
        .order_by(Delivery.finished_at.desc())
        .limit(limit)
    )
    results = session.execute(
        select(StudyResult.id, StudyResult.report_error, StudyResult.created_at)
        .where(StudyResult.report_error.is_not(None))
        .order_by(StudyResult.created_at.desc())
        .limit(limit)
    )
    items = (
        [
            Failure(f"job {job_id}", reason or "", at)
            for job_id, reason, at in jobs
            if at is not None
        ]
        + [
            Failure(f"reports of result {result_id}", error or "", at)
            for result_id, error, at in results
        ]
        + [
            Failure(
                f"{kind} to {destination}",
                f"status 0x{status:04X}" if status is not None else (error or ""),
                at,
            )
            for destination, kind, status, error, at in deliveries
        ]
    )
    return sorted(items, key=lambda item: item.at, reverse=True)[:limit]
