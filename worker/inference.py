"""Inference of a batch of jobs: decode and preprocess each, run the model once, record findings.

An image that cannot be decoded fails its own job (with the reason) and leaves the others in the
batch alone. A job already done (a redelivered message) is skipped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from pydicom.errors import InvalidDicomError

from core.preprocess import UnsupportedImage
from db.models import Job
from db.repository import fail_job, finish_job, start_job
from db.results import NewFinding, save_finding
from db.session import session_scope
from worker.preprocess import PreparedImage, prepare
from worker.runtime import WorkerRuntime

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


@dataclass(frozen=True)
class StartedJob:
    job_id: int
    instance_id: int
    study_id: int
    sop_instance_uid: str
    path: str


def _start(rt: WorkerRuntime, job_ids: list[int]) -> list[StartedJob]:
    started = []
    with session_scope(rt.sessions) as session:
        for job_id in job_ids:
            job: Job | None = start_job(session, job_id, rt.name)
            if job is None:
                LOGGER.info("job %s already finished; skipped", job_id)
                continue
            instance = job.instance
            started.append(
                StartedJob(
                    job_id, instance.id, instance.study_id, instance.sop_instance_uid, instance.path
                )
            )
    return started


def infer_jobs(rt: WorkerRuntime, job_ids: list[int]) -> set[int]:
    """Run inference for the jobs; returns the ids of the studies that got new findings."""
    model = rt.model
    card = model.card
    prepared: list[tuple[StartedJob, PreparedImage]] = []
    for job in _start(rt, job_ids):
        try:
            prepared.append((job, prepare(rt.settings.spool_dir / job.path, card.input_size)))
        except PERMANENT_ERRORS as exc:
            LOGGER.warning("job %s (%s) failed: %s", job.job_id, job.sop_instance_uid, exc)
            with session_scope(rt.sessions) as session:
                fail_job(session, job.job_id, f"{type(exc).__name__}: {exc}")
    if not prepared:
        return set()

    started = time.perf_counter()
    probabilities = model.probabilities(np.stack([image.model_input for _, image in prepared]))
    infer_ms = round((time.perf_counter() - started) * 1000 / len(prepared), 2)

    with session_scope(rt.sessions) as session:
        for (job, image), probability in zip(prepared, probabilities, strict=True):
            timings = {**image.outcome["timings_ms"], "infer": infer_ms}
            positive = bool(probability >= card.threshold)
            save_finding(
                session,
                NewFinding(
                    instance_id=job.instance_id,
                    study_id=job.study_id,
                    probability=float(probability),
                    positive=positive,
                    threshold=card.threshold,
                    model_name=card.name,
                    model_version=card.version,
                    device_uid=card.device_uid,
                    timings_ms=timings,
                ),
            )
            finish_job(
                session,
                job.job_id,
                {
                    **image.outcome,
                    "timings_ms": timings,
                    "probability": round(float(probability), 6),
                    "batch_size": len(prepared),
                },
            )
    LOGGER.info("inferred %d images in one batch (%.1f ms each)", len(prepared), infer_ms)
    return {job.study_id for job, _ in prepared}
