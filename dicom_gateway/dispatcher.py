"""Queue after commit: publish committed jobs to Celery, and sweep up what the broker missed.

The C-STORE handler commits the instance and its job, hands the job id to the dispatcher and
answers the sender; publishing never delays the response. Each publish first claims the job with a
conditional update (``received`` -> ``queued``), so a job is published once even when several
gateway processes sweep at the same time. When the broker is down the claim is released and the job
stays ``received``; the periodic sweep publishes it when the broker is back.
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
        """Queue ``job_id`` for publishing; call only after the job's row is committed."""
        self._pending.put(job_id)

    def _run(self) -> None:
        next_sweep = time.monotonic()
        while True:
            try:
                job_id = self._pending.get(timeout=max(0.0, next_sweep - time.monotonic()))
            except queue.Empty:
                job_id = 0
            if job_id is None:
                return
            if job_id and not self._broker_down:
                self.publish(job_id)
            if time.monotonic() >= next_sweep:
                self.sweep()
                next_sweep = time.monotonic() + self._sweep_interval

    def publish(self, job_id: int, stale: bool = False) -> bool:
        """Claim and publish one job; returns whether it was published by this call."""
        stale_before = utcnow() - self._stale_after if stale else None
        try:
            with session_scope(self._sessions) as session:
                if not claim_for_queue(session, job_id, stale_before):
                    return False
        except Exception:
            LOGGER.exception("cannot claim job %s; the sweep will retry", job_id)
            return False
        try:
            self._publish(job_id)
        except Exception as exc:
            if not self._broker_down:
                LOGGER.warning("broker unavailable (%s); jobs wait for the sweep", exc)
            self._broker_down = True
            with session_scope(self._sessions) as session:
                release_claim(session, job_id)
            return False
        if self._broker_down:
            LOGGER.info("broker available again")
        self._broker_down = False
        return True

    def sweep(self) -> int:
        """Publish every job the broker has not got; returns how many were published."""
        published = 0
        try:
            with session_scope(self._sessions) as session:
                job_ids = jobs_to_queue(session, stale_before=utcnow() - self._stale_after)
        except Exception:
            LOGGER.exception("sweep cannot read pending jobs")
            return 0
        for job_id in job_ids:
            if self.publish(job_id, stale=True):
                published += 1
            elif self._broker_down:
                break
        if published:
            LOGGER.info("sweep queued %d pending jobs", published)
        return published
