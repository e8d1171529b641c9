"""Celery tasks. Like web views: take ids, load from the database, call pure functions, record.

Every task is safe to run twice: a redelivered message finds the job done and returns, or redoes
the same work with the same result.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.preprocess import UnsupportedImage
from core.settings import Settings
from db.repository import fail_job, finish_job, start_job
from db.session import make_engine, make_session_factory, session_scope
from worker.celery_app import PROCESS_INSTANCE_TASK
from worker.preprocess import model_input_size, prepare

LOGGER = logging.getLogger(__name__)

PERMANENT_ERRORS = (
    UnsupportedImage,
    InvalidDicomError,
    NotImplementedError,
    ValueError,
    FileNotFoundError,
    SoftTimeLimitExceeded,
)
"""Errors that another attempt would meet again: the job fails with the reason recorded."""

TRANSIENT_RETRIES = 5


@dataclass
class WorkerRuntime:
    """Per-process resources, created lazily in each worker child (never in the parent)."""

    pid: int
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    input_size: int
    name: str

    @classmethod
    def create(cls, settings: Settings) -> WorkerRuntime:
        engine = make_engine(settings.resolved_database_url)
        return cls(
            pid=os.getpid(),
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            input_size=model_input_size(settings.model_path),
            name=f"{socket.gethostname()}:{os.getpid()}",
        )


_runtime: WorkerRuntime | None = None


def runtime(task: Task) -> WorkerRuntime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = WorkerRuntime.create(task.app.conf.cxr_settings)
    return _runtime


@shared_task(name=PROCESS_INSTANCE_TASK, bind=True, max_retries=TRANSIENT_RETRIES)
def process_instance(self: Task, job_id: int) -> dict[str, Any] | None:
    """Decode and preprocess one received instance; record shape and timings on its job."""
    rt = runtime(self)
    try:
        with session_scope(rt.sessions) as session:
            job = start_job(session, job_id, rt.name)
            if job is None:
                LOGGER.info("job %s already finished; nothing to do", job_id)
                return None
            path = rt.settings.spool_dir / job.instance.path
            sop_instance_uid = job.instance.sop_instance_uid
    except OperationalError as exc:
        raise self.retry(exc=exc, countdown=2**self.request.retries) from exc

    try:
        prepared = prepare(path, rt.input_size)
    except PERMANENT_ERRORS as exc:
        LOGGER.warning("job %s (%s) failed: %s", job_id, sop_instance_uid, exc)
        with session_scope(rt.sessions) as session:
            fail_job(session, job_id, f"{type(exc).__name__}: {exc}")
        return None

    try:
        with session_scope(rt.sessions) as session:
            finish_job(session, job_id, prepared.outcome)
    except OperationalError as exc:
        raise self.retry(exc=exc, countdown=2**self.request.retries) from exc
    LOGGER.info("job %s (%s) preprocessed %s", job_id, sop_instance_uid, prepared.outcome["shape"])
    return prepared.outcome
