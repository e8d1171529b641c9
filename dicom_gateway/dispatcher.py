"""Queue after commit: publish committed jobs to Celery, and sweep up what the broker missed.

The C-STORE handler commits the instance and its job, already claimed (``queued``), hands the job
id to the dispatcher and answers the sender; publishing never delays the response. When the broker
is down the claim is released (the job goes back to ``received``) and the periodic sweep publishes
it when the broker is back. The sweep claims jobs with a conditional update (``received`` ->
``queued``) before publishing them, so a job is published once even when several gateway processes
sweep at the same time.
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

BATCH = 100
"""Most jobs claimed in one transaction."""

Publish = Callable[[int], None]
"""Publishes one job id to the broker; raises when the broker cannot take it."""


class Dispatcher:
    """A thread that publishes job ids after their commit and sweeps pending jobs periodically."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        publish: Publish,
        sweep_interval: float,
        stale_after: float,
    ) -> None:
        self._sessions = sessions
        self._publish = publish
        self._sweep_interval = sweep_interval
        self._stale_after = timedelta(seconds=stale_after)
        self._pending: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="dispatcher", daemon=True)
        self._broker_down = False

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
        while True:
            batch = self._next_batch(timeout=max(0.0, next_sweep - time.monotonic()))
            if batch is None:
                return
            if batch:
                if self._broker_down:
                    self._release(batch)
                else:
                    self._publish_claimed(batch)
            if time.monotonic() >= next_sweep:
                self.sweep()
                next_sweep = time.monotonic() + self._sweep_interval

    def _next_batch(self, timeout: float) -> list[int] | None:
        """Job ids waiting now (at most ``BATCH``), after waiting up to ``timeout`` for the first;
        None when asked to stop."""
        try:
            first = self._pending.get(timeout=timeout)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < BATCH:
            try:
                batch.append(self._pending.get_nowait())
            except queue.Empty:
                break
        if None in batch:
            return None
        return [job_id for job_id in batch if job_id is not None]

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
        """Publish claimed jobs; those the broker did not take are released for the sweep."""
        for index, job_id in enumerate(job_ids):
            try:
                self._publish(job_id)
            except Exception as exc:
                if not self._broker_down:
                    LOGGER.warning("broker unavailable (%s); jobs wait for the sweep", exc)
                self._broker_down = True
                self._release(job_ids[index:])
                return index
        if self._broker_down and job_ids:
            LOGGER.info("broker available again")
            self._broker_down = False
        return len(job_ids)

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
        published = 0
        for start in range(0, len(job_ids), BATCH):
            published += self.publish(job_ids[start : start + BATCH], stale=True)
            if self._broker_down:
                break
        if published:
            LOGGER.info("sweep queued %d pending jobs", published)
        return published
