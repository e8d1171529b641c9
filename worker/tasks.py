"""Celery tasks. Like web views: take ids, load from the database, call the functions that do the
work, record the outcome, and be safe to run twice.

inference queue: ``infer_instances`` (a micro-batch of jobs) -> findings -> study result when the
study is complete -> ``report_result``; ``finalize_studies`` (an association was released) and
``finalize_quiet_studies`` (beat) make results for studies that became complete without new
findings.
dicom queue: ``report_result`` builds the reports and plans the deliveries; ``deliver`` sends one
object to one destination, retrying with backoff on transient failures.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task
from pydicom.errors import InvalidDicomError
from sqlalchemy.exc import OperationalError

from db.models import DeliveryOutcome, utcnow
from db.results import quiet_studies, record_report_error
from db.session import session_scope
from worker.celery_app import (
    DELIVER_TASK,
    FINALIZE_TASK,
    INFER_TASK,
    QUIET_SWEEP_TASK,
    REPORT_TASK,
)
from worker.export import Planned, deliver, plan_result
from worker.inference import infer_jobs
from worker.runtime import WorkerRuntime, runtime
from worker.study import finalize

LOGGER = logging.getLogger(__name__)

TRANSIENT_RETRIES = 5
REPORT_ERRORS = (ValueError, FileNotFoundError, InvalidDicomError)
"""Why a result's reports cannot be made from its images (for example images of two patients
under one Study Instance UID): recorded on the result, not retried."""
"""Retries of a task whose database was unreachable."""


def _runtime(task: Task) -> WorkerRuntime:
    return runtime(task.app.conf.cxr_settings)


def _retry_later(task: Task, exc: Exception) -> Exception:
    return task.retry(exc=exc, countdown=2**task.request.retries)  # type: ignore[no-any-return]


def _finalize_and_report(task: Task, rt: WorkerRuntime, study_ids: set[int] | list[int]) -> None:
    """Make the due results of these studies, and queue their reports after the commit."""
    for study_id in sorted(study_ids):
        with session_scope(rt.sessions) as session:
            result = finalize(session, study_id, rt.quiet)
            result_id = result.id if result is not None else None
        if result_id is not None:
            LOGGER.info("study %s: result %s", study_id, result_id)
            task.app.send_task(REPORT_TASK, args=[result_id])


@shared_task(name=INFER_TASK, bind=True, max_retries=TRANSIENT_RETRIES)
def infer_instances(self: Task, job_ids: list[int]) -> None:
    """Infer a micro-batch of instances, then finalize the studies that got findings."""
    rt = _runtime(self)
    try:
        studies = infer_jobs(rt, job_ids)
        _finalize_and_report(self, rt, studies)
    except OperationalError as exc:
        raise _retry_later(self, exc) from exc


@shared_task(name=FINALIZE_TASK, bind=True, max_retries=TRANSIENT_RETRIES)
def finalize_studies(self: Task, study_ids: list[int]) -> None:
    """Studies whose association was released cleanly: their results may be due now."""
    rt = _runtime(self)
    try:
        _finalize_and_report(self, rt, study_ids)
    except OperationalError as exc:
        raise _retry_later(self, exc) from exc


@shared_task(name=QUIET_SWEEP_TASK, bind=True)
def finalize_quiet_studies(self: Task) -> None:
    """Studies quiet for ``CXR_STUDY_QUIET_SECONDS`` are complete: make their results (beat)."""
    rt = _runtime(self)
    with session_scope(rt.sessions) as session:
        study_ids = quiet_studies(session, utcnow() - rt.quiet)
    _finalize_and_report(self, rt, study_ids)


@shared_task(name=REPORT_TASK, bind=True, max_retries=TRANSIENT_RETRIES)
def report_result(self: Task, result_id: int) -> None:
    """Build a result's reports and queue one delivery per destination and object."""
    rt = _runtime(self)
    try:
        planned = plan_result(rt, result_id)
    except OperationalError as exc:
        raise _retry_later(self, exc) from exc
    except REPORT_ERRORS as exc:  # the same data would fail again: record why, for operators
        LOGGER.error("result %s: no reports: %s", result_id, exc)
        with session_scope(rt.sessions) as session:
            record_report_error(session, result_id, f"{type(exc).__name__}: {exc}")
        return
    for item in planned:
        self.app.send_task(DELIVER_TASK, args=[item.kind, item.object_id, item.destination])


@shared_task(name=DELIVER_TASK, bind=True)
def deliver_object(self: Task, kind: str, object_id: int, destination: str) -> None:
    """One attempt to send an object to a destination; on a transient failure, another later."""
    rt = _runtime(self)
    step = deliver(rt, Planned(kind, object_id, destination))
    if step is not None and step.outcome is DeliveryOutcome.RETRYING:
        assert step.retry_after is not None
        raise self.retry(countdown=step.retry_after, max_retries=rt.config.delivery.max_attempts)
