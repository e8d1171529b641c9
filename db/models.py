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
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow)

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
