"""Repository functions for what goes back to PACS: report objects and delivery attempts.

Like ``db.repository``: each takes the session and never commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Delivery, DeliveryOutcome, Report, ReportKind, StudyResult, utcnow


def report_for(session: Session, study_result_id: int, kind: ReportKind) -> Report | None:
    return session.scalar(
        select(Report).where(Report.study_result_id == study_result_id, Report.kind == kind)
    )


def previous_report(
    session: Session, study_id: int, before_version: int, kind: ReportKind
) -> Report | None:
    """The study's latest report of ``kind`` for an earlier result version."""
    return session.scalar(
        select(Report)
        .join(StudyResult)
        .where(
            StudyResult.study_id == study_id,
            StudyResult.version < before_version,
            Report.kind == kind,
        )
        .order_by(StudyResult.version.desc())
        .limit(1)
    )


def add_report(session: Session, report: Report) -> Report:
    session.add(report)
    session.flush()
    return report


def was_sent(session: Session, sop_instance_uid: str, destination: str) -> bool:
    return (
        session.scalar(
            select(Delivery.id)
            .where(
                Delivery.sop_instance_uid == sop_instance_uid,
                Delivery.destination == destination,
                Delivery.outcome == DeliveryOutcome.SENT,
            )
            .limit(1)
        )
        is not None
    )


def attempts_so_far(session: Session, sop_instance_uid: str, destination: str) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(
                Delivery.sop_instance_uid == sop_instance_uid,
                Delivery.destination == destination,
            )
        )
        or 0
    )


@dataclass(frozen=True)
class Attempt:
    """One C-STORE attempt as the delivery task saw it."""

    destination: str
    called_ae_title: str
    address: str
    kind: str
    sop_instance_uid: str
    report_id: int | None
    instance_id: int | None
    attempt: int
    status: int | None
    outcome: DeliveryOutcome
    error: str | None


def record_attempt(session: Session, attempt: Attempt, started_at: datetime) -> None:
    session.add(
        Delivery(
            destination=attempt.destination,
            called_ae_title=attempt.called_ae_title,
            address=attempt.address,
            kind=attempt.kind,
            sop_instance_uid=attempt.sop_instance_uid,
            report_id=attempt.report_id,
            instance_id=attempt.instance_id,
            attempt=attempt.attempt,
            status=attempt.status,
            outcome=attempt.outcome,
            error=attempt.error[:512] if attempt.error else None,
            started_at=started_at,
            finished_at=utcnow(),
        )
    )


def made_by_us(session: Session, sop_instance_uid: str) -> bool:
    """Whether this SOP Instance UID is one of our reports (loop protection)."""
    return (
        session.scalar(select(Report.id).where(Report.sop_instance_uid == sop_instance_uid))
        is not None
    )


def forwarded_by_us(session: Session, sop_instance_uid: str) -> bool:
    """Whether we forwarded this original to a destination (loop protection)."""
    return (
        session.scalar(
            select(Delivery.id)
            .where(Delivery.sop_instance_uid == sop_instance_uid, Delivery.kind == "original")
            .limit(1)
        )
        is not None
    )
