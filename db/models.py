"""The database schema: the source of truth for every association, study, instance and job.

Typed SQLAlchemy 2.0 models. Every change to them comes with an Alembic migration in
``db/migrations/versions``.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Enum, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

UID = String(64)
"""A UI value: at most 64 characters (PS3.5 6.2)."""
AE_TITLE = String(16)
"""An AE value: at most 16 characters (PS3.5 6.2)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use datetime.now(UTC)")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class AssociationOutcome(enum.StrEnum):
    OPEN = "open"
    RELEASED = "released"
    ABORTED = "aborted"
    REJECTED = "rejected"


class JobState(enum.StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


def _enum(cls: type[enum.StrEnum]) -> Enum:
    return Enum(
        cls,
        values_callable=lambda members: [m.value for m in members],
        native_enum=False,
        length=16,
        validate_strings=True,
    )


class Association(Base):
    """One row per association our Storage SCP saw, accepted or rejected (the audit trail)."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(primary_key=True)
    calling_ae_title: Mapped[str] = mapped_column(AE_TITLE)
    called_ae_title: Mapped[str] = mapped_column(AE_TITLE)
    peer_address: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int]
    gateway_pid: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    instances_received: Mapped[int] = mapped_column(default=0)
    instances_refused: Mapped[int] = mapped_column(default=0)
    outcome: Mapped[AssociationOutcome] = mapped_column(
        _enum(AssociationOutcome), default=AssociationOutcome.OPEN
    )
    detail: Mapped[str | None] = mapped_column(String(256))


class Study(Base):
    """A study as received. It is complete, and its result due, once the last association that
    carried it was released cleanly after its last instance arrived, or once it has been quiet
    for ``CXR_STUDY_QUIET_SECONDS`` (see ``worker.study``)."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(
        doc="When an association carrying the study was last released cleanly."
    )
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(194))
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))

    instances: Mapped[list[Instance]] = relationship(back_populates="study")


class Instance(Base):
    """A stored object. A re-sent SOP Instance UID with different bytes is a new version."""

    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("sop_instance_uid", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    version: Mapped[int] = mapped_column(default=1)
    path: Mapped[str] = mapped_column(String(512), doc="Relative to the spool directory.")
    size_bytes: Mapped[int]
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(16))
    view_position: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)

    study: Mapped[Study] = relationship(back_populates="instances")
    job: Mapped[Job] = relationship(back_populates="instance")


class Job(Base):
    """The processing of one instance, with a timestamp per stage it reached."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_received_at", "state", "received_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), unique=True)
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.RECEIVED)
    reason: Mapped[str | None] = mapped_column(
        String(512), doc="Why it was skipped, or the last error."
    )
    attempts: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(128), doc="host:pid of the last attempt.")
    outcome: Mapped[dict[str, Any] | None] = mapped_column(doc="Shape, timings and the like.")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None]
    processing_at: Mapped[datetime | None]
    done_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    skipped_at: Mapped[datetime | None]

    instance: Mapped[Instance] = relationship(back_populates="job")


class Finding(Base):
    """The model's output for one instance (its latest inference)."""

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    probability: Mapped[float]
    positive: Mapped[bool]
    threshold: Mapped[float]
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    device_uid: Mapped[str] = mapped_column(UID)
    timings_ms: Mapped[dict[str, Any]] = mapped_column(doc="decode, preprocess and infer.")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StudyResult(Base):
    """A study's result from the findings of its images; a later image makes a new version."""

    __tablename__ = "study_results"
    __table_args__ = (UniqueConstraint("study_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    version: Mapped[int]
    probability: Mapped[float]
    positive: Mapped[bool]
    threshold: Mapped[float]
    rule: Mapped[str] = mapped_column(String(128))
    instance_ids: Mapped[list[int]] = mapped_column(JSON, doc="The instances the result used.")
    complete_by: Mapped[str] = mapped_column(String(16), doc="released or quiet")
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    device_uid: Mapped[str] = mapped_column(UID)
    report_error: Mapped[str | None] = mapped_column(
        String(512), doc="Why its reports could not be made, if so."
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReportKind(enum.StrEnum):
    SR = "sr"
    SC = "sc"


class Report(Base):
    """A DICOM object made for a result. Its SOP Instance UID is fixed (and the file written)
    before the first delivery attempt, so every resend is the same object."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("study_result_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_result_id: Mapped[int] = mapped_column(ForeignKey("study_results.id"))
    kind: Mapped[ReportKind] = mapped_column(_enum(ReportKind))
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512), doc="Relative to CXR_HOME.")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeliveryOutcome(enum.StrEnum):
    SENT = "sent"
    RETRYING = "retrying"
    FAILED = "failed"


class Delivery(Base):
    """One C-STORE attempt of one object to one destination."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_object", "sop_instance_uid", "destination"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    destination: Mapped[str] = mapped_column(String(64))
    called_ae_title: Mapped[str] = mapped_column(AE_TITLE)
    address: Mapped[str] = mapped_column(String(256), doc="host:port")
    kind: Mapped[str] = mapped_column(String(16), doc="sr, sc or original")
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    report_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id"))
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"))
    attempt: Mapped[int]
    status: Mapped[int | None] = mapped_column(doc="The peer's DIMSE status, when it answered.")
    outcome: Mapped[DeliveryOutcome] = mapped_column(_enum(DeliveryOutcome))
    error: Mapped[str | None] = mapped_column(String(512))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)


class FlagState(enum.StrEnum):
    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    DISMISSED = "dismissed"


class Flag(Base):
    """A worklist flag on a study whose result was positive. Never deleted: a revised result
    updates it (and reopens it), and every change is a ``FlagEvent``."""

    __tablename__ = "flags"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    study_result_id: Mapped[int] = mapped_column(ForeignKey("study_results.id"))
    positive: Mapped[bool]
    priority: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(256))
    probability: Mapped[float]
    model_version: Mapped[str] = mapped_column(String(64))
    state: Mapped[FlagState] = mapped_column(_enum(FlagState), default=FlagState.NEW)
    state_changed_by: Mapped[str | None] = mapped_column(String(128))
    state_changed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class FlagEvent(Base):
    """The history of a flag: raised, revised, acknowledged, dismissed."""

    __tablename__ = "flag_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    flag_id: Mapped[int] = mapped_column(ForeignKey("flags.id"), index=True)
    event: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    state: Mapped[FlagState] = mapped_column(_enum(FlagState))
    positive: Mapped[bool]
    probability: Mapped[float]
    study_result_id: Mapped[int] = mapped_column(ForeignKey("study_results.id"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
