"""The Celery application: Redis in production, Kombu's SQLAlchemy transport on SQLite embedded.

Messages carry database ids only, as JSON. Tasks are acknowledged late with a prefetch of one, so a
worker that dies mid-task leaves its message to be redelivered; the broker's visibility timeout is
above the longest task so a slow task is never handed to a second worker while it still runs.

``celery -A worker.celery_app worker`` works for Celery users; it reads the same ``CXR_`` settings.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from celery import Celery
from kombu.entity import Queue
from sqlalchemy.engine import make_url

from core.settings import Settings

app: Celery

INFERENCE_QUEUE = "inference"
DICOM_QUEUE = "dicom"

INFER_TASK = "cxr.infer_instances"
FINALIZE_TASK = "cxr.finalize_studies"
QUIET_SWEEP_TASK = "cxr.finalize_quiet_studies"
REPORT_TASK = "cxr.report_result"
DELIVER_TASK = "cxr.deliver"

TASK_QUEUES = {
    INFER_TASK: INFERENCE_QUEUE,
    FINALIZE_TASK: INFERENCE_QUEUE,
    QUIET_SWEEP_TASK: INFERENCE_QUEUE,
    REPORT_TASK: DICOM_QUEUE,
    DELIVER_TASK: DICOM_QUEUE,
}
"""Inference and study results on one queue (GPU workers in production), building and sending
DICOM objects on the other, so a slow PACS never holds up inference."""
EMBEDDED_BROKER_POLL_SECONDS = 0.05


def _prepare_embedded_broker(broker_url: str) -> None:
    """WAL mode for the embedded broker's SQLite file (it persists in the file).

    Kombu opens the file with default settings; in its default rollback-journal mode every publish
    costs several fsyncs, in WAL mode one.
    """
    path = Path(make_url(broker_url.removeprefix("sqla+")).database or "")
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA journal_mode = WAL")


def _use_fast_embedded_polling() -> None:
    """Kombu's SQLAlchemy transport polls every second by default.

    Its transport options go to ``create_engine``, so in kombu 5.x the interval can only be set
    on the transport class.
    """
    from kombu.transport.sqlalchemy import Transport

    Transport.polling_interval = EMBEDDED_BROKER_POLL_SECONDS


def create_celery(settings: Settings) -> Celery:
    broker_url = settings.resolved_broker_url
    transport_options: dict[str, float] = {}
    if broker_url.startswith("sqla+sqlite"):
        _prepare_embedded_broker(broker_url)
        _use_fast_embedded_polling()
    else:
        transport_options["visibility_timeout"] = settings.visibility_timeout
    app = Celery("cxr_triage", broker=broker_url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(settings.task_time_limit - 30, settings.task_time_limit * 0.8),
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_queues=[Queue(INFERENCE_QUEUE), Queue(DICOM_QUEUE)],
        task_default_queue=INFERENCE_QUEUE,
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        beat_schedule={
            "finalize-quiet-studies": {
                "task": QUIET_SWEEP_TASK,
                "schedule": max(1.0, settings.study_quiet_seconds / 4),
            }
        },
        beat_schedule_filename=str(settings.home / "celerybeat-schedule"),
        worker_hijack_root_logger=False,
        # Task events cost a broker message per task state; Flower can turn them on when it
        # watches (``celery -A worker.celery_app control enable_events``). The history that
        # matters is in the database.
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    app.conf.cxr_settings = settings
    return app


def __getattr__(name: str) -> Celery:
    """``app`` for ``celery -A worker.celery_app``, built on first use from the environment.

    The ``cxr-triage`` entry points call ``create_celery`` with the settings they already read.
    """
    if name == "app":
        global app
        app = create_celery(Settings())
        return app
    raise AttributeError(name)
