"""Queue after commit: publish committed jobs to Celery in micro-batches, and sweep up what the
broker missed.

The C-STORE handler commits the instance and its job, already claimed (``queued``), hands the job
id to the dispatcher and answers the sender; publishing never delays the response. The dispatcher
waits a moment (``batch_wait``) for more jobs and publishes up to ``batch_size`` of them as one
inference message, which the worker runs through the model as one batch.

When the broker is down the claims are released (the jobs go back to ``received``) and the
periodic sweep publishes them when the broker is back. The sweep claims jobs with a conditional
update (``received`` -> ``queued``) before publishing them, so a job is published once even when
several gateway processes sweep at the same time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from db.models import utcnow
from db.repository import claim_for_queue, jobs_to_queue, release_claim
from db.session import session_scope

LOGGER = logging.getLogger(__name__)

Publish = Callable[[list[int]], None]
"""Publishes one message for a batch of job ids; raises when the broker cannot take it."""


class Dispatcher:
    """A thread that publishes job ids after their commit and sweeps pending jobs periodically."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        publish: Publish,
        sweep_interval: float,
        stale_after: float,
        batch_size: int,
        batch_wait: float,
    ) -> None:
        self._sessions = sessions
        self._publish = publish
        self._sweep_interval = sweep_interval
        self._stale_after = timedelta(seconds=stale_after)
        self._batch_size = batch_size
        self._batch_wait = batch_wait
        self._pending: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="dispatcher", daemon=True)
        self._broker_down = False
        self._stopping = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._pending.put(None)
        self._thread.join(timeout=10)

    def submit(self, job_id: int) -> None:
        """Publish ``job_id``, claimed and committed by the caller."""
        self._pending.put(job_id)

    def _run(self) -> None:
        next_sweep = time.monotonic()
        while not self._stopping:
            batch = self._next_batch(timeout=max(0.0, next_sweep - time.monotonic()))
            if batch:
                if self._broker_down:
                    self._release(batch)
                else:
                    self._publish_claimed(batch)
            if time.monotonic() >= next_sweep and not self._stopping:
                self.sweep()
                next_sweep = time.monotonic() + self._sweep_interval

    def _next_batch(self, timeout: float) -> list[int]:
        """Up to ``batch_size`` job ids: the first within ``timeout``, then what arrives within
        ``batch_wait`` after it."""
        batch: list[int] = []
        wait = timeout
        deadline: float | None = None
        while len(batch) < self._batch_size:
            try:
                job_id = self._pending.get(timeout=wait)
            except queue.Empty:
                break
            if job_id is None:
                self._stopping = True
                break
            batch.append(job_id)
            if deadline is None:
                deadline = time.monotonic() + self._batch_wait
            wait = max(0.0, deadline - time.monotonic())
        return batch

    def publish(self, job_ids: list[int], stale: bool = False) -> int:
        """Claim the jobs in one transaction, then publish them; returns how many were published."""
        stale_before = utcnow() - self._stale_after if stale else None
        try:
            with session_scope(self._sessions) as session:
                claimed = claim_for_queue(session, job_ids, stale_before)
        except Exception:
            LOGGER.exception("cannot claim jobs %s; the sweep will retry", job_ids)
            return 0
        return self._publish_claimed(claimed)

    def _publish_claimed(self, job_ids: list[int]) -> int:
        """Publish claimed jobs in batches; those the broker did not take are released."""
        published = 0
        for start in range(0, len(job_ids), self._batch_size):
            batch = job_ids[start : start + self._batch_size]
            try:
                self._publish(batch)
            except Exception as exc:
                if not self._broker_down:
                    LOGGER.warning("broker unavailable (%s); jobs wait for the sweep", exc)
                self._broker_down = True
                self._release(job_ids[start:])
                return published
            published += len(batch)
        if self._broker_down and published:
            LOGGER.info("broker available again")
            self._broker_down = False
        return published

    def _release(self, job_ids: list[int]) -> None:
        try:
            with session_scope(self._sessions) as session:
                release_claim(session, job_ids)
        except Exception:
            LOGGER.exception("cannot release jobs %s; they are queued again once stale", job_ids)

    def sweep(self) -> int:
        """Publish every job the broker has not got; returns how many were published."""
        try:
            with session_scope(self._sessions) as session:
                job_ids = jobs_to_queue(session, stale_before=utcnow() - self._stale_after)
        except Exception:
            LOGGER.exception("sweep cannot read pending jobs")
            return 0
        published = self.publish(job_ids, stale=True) if job_ids else 0
        if published:
            LOGGER.info("sweep queued %d pending jobs", published)
        return published
