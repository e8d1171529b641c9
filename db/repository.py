"""Repository functions: each takes the session and never commits; the caller owns the unit of work.

State changes of a job are conditional updates (``... WHERE state = <expected>``) so that two
processes racing for the same job cannot both win.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.models import (
    Association,
    AssociationOutcome,
    Instance,
    Job,
    JobState,
    Study,
    utcnow,
)


@dataclass(frozen=True)
class StudyIdentity:
    """How a reader finds the study in PACS: the Patient (PS3.3 C.7.1.1) and General Study
    (PS3.3 C.7.2.1) attributes of the images as received, for the worklist."""

    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    """DA, YYYYMMDD (PS3.5 6.2)."""
    study_description: str | None = None


@dataclass(frozen=True)
class NewInstance:
    """A received object's identity and attributes, as the gateway recorded them."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    version: int
    path: str
    size_bytes: int
    modality: str | None
    body_part_examined: str | None
    view_position: str | None
    association_id: int | None
    skip_reason: str | None
    study: StudyIdentity = StudyIdentity()


def open_association(
    session: Session,
    *,
    calling_ae_title: str,
    called_ae_title: str,
    peer_address: str,
    peer_port: int,
    gateway_pid: int,
    outcome: AssociationOutcome = AssociationOutcome.OPEN,
    detail: str | None = None,
) -> int:
    row = Association(
        calling_ae_title=calling_ae_title,
        called_ae_title=called_ae_title,
        peer_address=peer_address,
        peer_port=peer_port,
        gateway_pid=gateway_pid,
        outcome=outcome,
        detail=detail,
        ended_at=utcnow() if outcome is AssociationOutcome.REJECTED else None,
    )
    session.add(row)
    session.flush()
    return row.id


def close_association(
    session: Session,
    association_id: int,
    *,
    outcome: AssociationOutcome,
    instances_received: int,
    instances_refused: int,
    detail: str | None = None,
) -> None:
    session.execute(
        update(Association)
        .where(Association.id == association_id)
        .values(
            ended_at=utcnow(),
            outcome=outcome,
            instances_received=instances_received,
            instances_refused=instances_refused,
            detail=detail,
        )
    )


def stored_versions(session: Session, sop_instance_uid: str) -> list[tuple[int, str]]:
    """(version, spool path) of every stored version of a SOP Instance UID, oldest first."""
    rows = session.execute(
        select(Instance.version, Instance.path)
        .where(Instance.sop_instance_uid == sop_instance_uid)
        .order_by(Instance.version)
    )
    return [(version, path) for version, path in rows]


def _upsert_study(
    session: Session, study_instance_uid: str, identity: StudyIdentity, now: datetime
) -> int:
    """The study's id, inserting it when new; either way its last_received_at becomes ``now``
    and each identifying attribute the newest image carries replaces the stored one."""
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    attributes = asdict(identity)
    statement = insert(Study).values(
        study_instance_uid=study_instance_uid,
        first_received_at=now,
        last_received_at=now,
        **attributes,
    )
    statement = statement.on_conflict_do_update(
        index_elements=[Study.study_instance_uid],
        set_={
            "last_received_at": statement.excluded.last_received_at,
            **{
                name: func.coalesce(getattr(statement.excluded, name), getattr(Study, name))
                for name in attributes
            },
        },
    )
    return int(session.execute(statement.returning(Study.id)).scalar_one())


def add_instance(session: Session, new: NewInstance) -> tuple[int, int]:
    """Insert the instance, its study if new, and its job; returns (instance id, job id).

    The job starts ``queued``, already claimed for the caller to publish after the commit, when
    the instance is to be queued; ``skipped`` (with the reason) otherwise. Plain INSERT
    statements, not the ORM unit of work: this runs once per received object.
    """
    now = utcnow()
    instance_id = session.execute(
        insert(Instance)
        .values(
            study_id=_upsert_study(session, new.study_instance_uid, new.study, now),
            association_id=new.association_id,
            series_instance_uid=new.series_instance_uid,
            sop_instance_uid=new.sop_instance_uid,
            sop_class_uid=new.sop_class_uid,
            transfer_syntax_uid=new.transfer_syntax_uid,
            version=new.version,
            path=new.path,
            size_bytes=new.size_bytes,
            modality=new.modality,
            body_part_examined=new.body_part_examined,
            view_position=new.view_position,
            received_at=now,
        )
        .returning(Instance.id)
    ).scalar_one()
    skipped = new.skip_reason is not None
    job_id = session.execute(
        insert(Job)
        .values(
            instance_id=instance_id,
            state=JobState.SKIPPED if skipped else JobState.QUEUED,
            reason=new.skip_reason,
            received_at=now,
            queued_at=None if skipped else now,
            skipped_at=now if skipped else None,
        )
        .returning(Job.id)
    ).scalar_one()
    return int(instance_id), int(job_id)


def claim_for_queue(
    session: Session, job_ids: list[int], stale_before: datetime | None = None
) -> list[int]:
    """Mark jobs queued before their messages are published; returns the ids this call claimed.

    A ``received`` job is always claimable. With ``stale_before``, a stale job is claimable again
    (see ``_stale``). A job another process claimed first is not returned.
    """
    claimable = Job.state == JobState.RECEIVED
    if stale_before is not None:
        claimable = or_(claimable, _stale(stale_before))
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), claimable)
        .values(state=JobState.QUEUED, queued_at=utcnow())
        .returning(Job.id)
    )
    return sorted(int(job_id) for job_id in rows.scalars())


def release_claim(session: Session, job_ids: list[int]) -> None:
    """Undo ``claim_for_queue`` when publishing failed, so a later sweep queues the jobs."""
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.state == JobState.QUEUED)
        .values(state=JobState.RECEIVED, queued_at=None)
    )


def _stale(stale_before: datetime) -> ColumnElement[bool]:
    """Jobs whose message is lost: queued but never started (a broker restarted without
    persistence), or started and never finished (a worker killed outright, on a broker without
    redelivery). ``stale_before`` must lie beyond the task time limit."""
    return or_(
        and_(Job.state == JobState.QUEUED, Job.queued_at < stale_before),
        and_(Job.state == JobState.PROCESSING, Job.processing_at < stale_before),
    )


def jobs_to_queue(session: Session, stale_before: datetime, limit: int = 500) -> list[int]:
    """Jobs the broker has not got: ``received`` ones, and stale ones."""
    rows = session.execute(
        select(Job.id)
        .where(or_(Job.state == JobState.RECEIVED, _stale(stale_before)))
        .order_by(Job.id)
        .limit(limit)
    )
    return [int(job_id) for job_id in rows.scalars()]


def start_job(session: Session, job_id: int, worker: str) -> Job | None:
    """Mark a job processing for this attempt; None when it is already done or skipped.

    A job redelivered after a worker died (state ``processing``) or after a failure is started
    again: every stage is idempotent.
    """
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.state in (JobState.DONE, JobState.SKIPPED):
        return None
    job.state = JobState.PROCESSING
    job.processing_at = utcnow()
    job.attempts += 1
    job.worker = worker
    job.reason = None
    session.flush()
    return job


def finish_job(session: Session, job_id: int, outcome: dict[str, Any]) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(state=JobState.DONE, done_at=utcnow(), outcome=outcome, reason=None)
    )


def fail_job(session: Session, job_id: int, error: str) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(state=JobState.FAILED, failed_at=utcnow(), reason=error[:512])
    )
