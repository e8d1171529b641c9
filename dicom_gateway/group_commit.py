"""Group commit: one file-system flush and one database commit for every object waiting.

Each association's handler moves its object into the spool and hands the rows to this committer,
then waits. The committer thread takes everything waiting, flushes the spool's file system once
(the objects' bytes and their directory entries), inserts all the rows in one transaction and
commits, then wakes the handlers, which answer their senders. Under concurrent senders the cost of
durability is shared; a single sender waits for exactly one flush and one commit per object, as it
would without batching.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db.repository import NewInstance, add_instance
from db.session import session_scope
from dicom_gateway.spool import sync_filesystem

LOGGER = logging.getLogger(__name__)

BATCH_LIMIT = 64


@dataclass
class _Pending:
    new: NewInstance
    done: Future[tuple[int, int]] = field(default_factory=Future)


class GroupCommit:
    """Makes moved-in objects durable and commits their rows, in batches, on one thread."""

    def __init__(self, spool_dir: Path, sessions: sessionmaker[Session]) -> None:
        self._spool_dir = spool_dir
        self._sessions = sessions
        self._waiting: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def record(self, new: NewInstance) -> tuple[int, int]:
        """Block until ``new`` (already moved into the spool) is durable and committed.

        Returns (instance id, job id); raises what the commit raised.
        """
        pending = _Pending(new)
        self._waiting.put(pending)
        return pending.done.result()

    def stop(self) -> None:
        self._waiting.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._waiting.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH_LIMIT:
                try:
                    item = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._waiting.put(None)
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            sync_filesystem(self._spool_dir)
            with session_scope(self._sessions) as session:
                ids = [add_instance(session, pending.new) for pending in batch]
        except Exception as exc:
            if len(batch) > 1:
                LOGGER.warning(
                    "group commit of %d failed (%s); committing one by one", len(batch), exc
                )
                for pending in batch:
                    self._commit([pending])
            else:
                batch[0].done.set_exception(exc)
            return
        for pending, result in zip(batch, ids, strict=True):
            pending.done.set_result(result)
