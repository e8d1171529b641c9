"""The Storage SCP: a pynetdicom AE answering C-ECHO and C-STORE (PS3.4 Annex A and B).

Handlers are plain functions taking ``event`` and their dependencies, bound in one list next to
the server (``event_handlers``). pynetdicom writes each incoming data set straight to a temporary
file in ``spool/.incoming`` as its PDUs arrive (``STORE_RECV_CHUNKED_DATASET``); the C-STORE
handler only checks the header, moves the file into the spool and records it, and the response goes
out when the handler returns. Inference is queued by the dispatcher after the commit.

Several processes can share the port (``CXR_GATEWAY_PROCESSES``, ``SO_REUSEPORT``): the kernel
spreads associations across them, so senders are not limited by one Python interpreter.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from core.config import load_config
from core.settings import Settings
from db.models import AssociationOutcome
from db.repository import close_association, open_association
from db.results import mark_released
from db.session import make_engine, make_session_factory, session_scope
from dicom_gateway.dispatcher import Dispatcher
from dicom_gateway.ingest import Ingest
from dicom_gateway.statuses import SUCCESS
from worker.celery_app import FINALIZE_TASK, INFER_TASK, create_celery

LOGGER = logging.getLogger(__name__)

REJECT_TRANSIENT = 0x02
REJECT_SOURCE_PRESENTATION = 0x03
REJECT_LOCAL_LIMIT_EXCEEDED = 0x02
"""A-ASSOCIATE-RJ result, source and reason for "temporarily out of room" (PS3.8 9.3.4)."""

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
"""Verification SOP Class (PS3.4 A.4): C-ECHO."""

ACSE_REJECT_REASONS = {
    (0x01, 0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x01, 0x07): "called AE title not recognised",
    (0x02, 0x03, 0x02): "local limit exceeded",
}


@dataclass
class AssociationRecord:
    """What we count for one association until it ends."""

    association_id: int
    received: int = 0
    refused: int = 0
    outcome: AssociationOutcome = AssociationOutcome.ABORTED
    lock: threading.Lock = field(default_factory=threading.Lock)


class AssociationLog:
    """The audit rows of this process's associations, keyed by pynetdicom's Association.

    When an association ends released, the studies it carried are marked released and handed
    to ``on_released``: their results may be due (see ``worker.study``).
    """

    def __init__(self, sessions: Any, on_released: Callable[[list[int]], None]) -> None:
        self._sessions = sessions
        self._on_released = on_released
        self._records: dict[int, AssociationRecord] = {}

    def opened(self, assoc: Any, outcome: AssociationOutcome, detail: str | None = None) -> int:
        requestor = assoc.requestor
        request = requestor.primitive  # the A-ASSOCIATE-RQ, available from EVT_REQUESTED on
        with session_scope(self._sessions) as session:
            association_id = open_association(
                session,
                calling_ae_title=str(request.calling_ae_title).strip(),
                called_ae_title=str(request.called_ae_title).strip(),
                peer_address=str(requestor.address),
                peer_port=int(requestor.port),
                gateway_pid=os.getpid(),
                outcome=outcome,
                detail=detail,
            )
        if outcome is AssociationOutcome.OPEN:
            self._records[id(assoc)] = AssociationRecord(association_id)
        return association_id

    def get(self, assoc: Any) -> AssociationRecord | None:
        return self._records.get(id(assoc))

    def closed(self, assoc: Any) -> None:
        record = self._records.pop(id(assoc), None)
        if record is None:
            return
        released: list[int] = []
        with session_scope(self._sessions) as session:
            close_association(
                session,
                record.association_id,
                outcome=record.outcome,
                instances_received=record.received,
                instances_refused=record.refused,
            )
            if record.outcome is AssociationOutcome.RELEASED and record.received:
                released = mark_released(session, record.association_id)
        if released:
            self._on_released(released)
        LOGGER.info(
            "association %s %s: %d stored, %d refused",
            record.association_id,
            record.outcome,
            record.received,
            record.refused,
        )


# --- Handlers: plain functions of the event and their dependencies ---------------------------


def handle_requested(event: Any, ingest: Ingest, log: AssociationLog) -> None:
    """Refuse new associations while free disk is below the reserve (before negotiation)."""
    if not ingest.has_room():
        assoc = event.assoc
        assoc.acse.send_reject(
            REJECT_TRANSIENT, REJECT_SOURCE_PRESENTATION, REJECT_LOCAL_LIMIT_EXCEEDED
        )
        log.opened(assoc, AssociationOutcome.REJECTED, "free disk space below the reserve")
        LOGGER.warning(
            "association from %s refused: disk below reserve",
            assoc.requestor.primitive.calling_ae_title,
        )


def handle_rejected(event: Any, log: AssociationLog) -> None:
    """Audit associations that pynetdicom rejected (allow-list, association limit)."""
    primitive = event.assoc.acceptor.primitive
    reason = (primitive.result, primitive.result_source, primitive.diagnostic)
    log.opened(
        event.assoc, AssociationOutcome.REJECTED, ACSE_REJECT_REASONS.get(reason, str(reason))
    )


def handle_established(event: Any, log: AssociationLog) -> None:
    log.opened(event.assoc, AssociationOutcome.OPEN)


def handle_released(event: Any, log: AssociationLog) -> None:
    record = log.get(event.assoc)
    if record is not None:
        record.outcome = AssociationOutcome.RELEASED


def handle_closed(event: Any, log: AssociationLog) -> None:
    """Write the association's audit row; an association never released counts as aborted."""
    discard_partial_dataset(event.assoc)
    log.closed(event.assoc)


def handle_echo(event: Any) -> int:
    """C-ECHO (PS3.4 A.4): always success."""
    return SUCCESS


def handle_store(event: Any, ingest: Ingest, log: AssociationLog) -> Dataset:
    """C-STORE (PS3.4 B.2.2): store durably, record, then answer.

    Returns the response status with an Error Comment (0000,0902) when refusing.
    """
    request = event.request
    record = log.get(event.assoc)
    result = ingest.store(
        Path(event.dataset_path),
        str(request.AffectedSOPClassUID),
        str(request.AffectedSOPInstanceUID),
        record.association_id if record else None,
    )
    if record is not None:
        with record.lock:
            if result.stored:
                record.received += 1
            else:
                record.refused += 1
    response = Dataset()
    response.Status = result.status
    if result.comment:
        response.ErrorComment = result.comment
    return response


def event_handlers(ingest: Ingest, log: AssociationLog) -> list[Any]:
    return [
        (evt.EVT_REQUESTED, handle_requested, [ingest, log]),
        (evt.EVT_REJECTED, handle_rejected, [log]),
        (evt.EVT_ESTABLISHED, handle_established, [log]),
        (evt.EVT_RELEASED, handle_released, [log]),
        (evt.EVT_CONN_CLOSE, handle_closed, [log]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [ingest, log]),
    ]


# --- The server --------------------------------------------------------------------------------


class ReusePortServer(ThreadedAssociationServer):
    """An association server whose port other gateway processes can bind too."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def build_ae(settings: Settings) -> AE:
    """Our AE: Verification, and every storage SOP class in any transfer syntax.

    pynetdicom's unrestricted storage service accepts every proposed storage, private or unknown
    SOP class with the first transfer syntax proposed for it, and negotiates the other
    (non-storage) SOP classes against the supported contexts as usual: only Verification. It also
    spares each association a deep copy of 170 x 47 supported contexts.
    """
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    ae = AE(ae_title=settings.ae_title)
    ae.add_supported_context(VERIFICATION_SOP_CLASS)
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.require_calling_aet = settings.allowed_calling_aets
    return ae


def receive_into(incoming: Path) -> Path:
    """Have pynetdicom write incoming data sets to files in this process's own directory under
    ``incoming``, not to memory; returns that directory.

    pynetdicom creates them with ``tempfile``; pointing ``tempfile`` at the spool's file system
    makes the later rename atomic. The gateway process runs nothing else that uses ``tempfile``.
    Each process has its own directory so that one starting up never touches another's transfers.
    """
    own = incoming / str(os.getpid())
    own.mkdir(parents=True, exist_ok=True)
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(own)
    return own


def discard_partial_dataset(assoc: Any) -> None:
    """Delete the temporary file of a data set cut off by an abort.

    pynetdicom leaves the file it was writing open and on disk when the association ends in the
    middle of a C-STORE; it is in the DIMSE provider's message being assembled.
    """
    message = getattr(assoc.dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is not None:
        partial.close()
        Path(partial.name).unlink(missing_ok=True)


def remove_dead_transfers(incoming: Path) -> int:
    """Delete what gateway processes that no longer run left half-received; none of it was
    acknowledged. Returns how many directories went."""
    removed = 0
    for directory in incoming.iterdir():
        if directory.name.isdigit() and not _running(int(directory.name)):
            shutil.rmtree(directory, ignore_errors=True)
            removed += 1
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Gateway:
    """One receiving process: AE, ingest, association log and dispatcher."""

    def __init__(self, settings: Settings, reuse_port: bool = False) -> None:
        self.settings = settings
        self.incoming = receive_into(settings.incoming_dir)
        self.engine = make_engine(settings.resolved_database_url)
        sessions = make_session_factory(self.engine)
        celery = create_celery(settings)

        def publish(job_ids: list[int]) -> None:
            celery.send_task(INFER_TASK, args=[job_ids], retry=False)

        def finalize(study_ids: list[int]) -> None:
            try:
                celery.send_task(FINALIZE_TASK, args=[study_ids], retry=False)
            except Exception as exc:  # the quiet sweep finalizes them later
                LOGGER.warning("cannot queue released studies %s: %s", study_ids, exc)

        self.dispatcher = Dispatcher(
            sessions,
            publish,
            settings.sweep_interval,
            settings.stale_job_after,
            settings.inference_batch_size,
            settings.inference_batch_wait,
        )
        self.ingest = Ingest(
            settings.spool_dir,
            settings.disk_reserve_mb * 1024 * 1024,
            sessions,
            load_config(settings.config).selection,
            self.dispatcher.submit,
        )
        self.log = AssociationLog(sessions, finalize)
        self.ae = build_ae(settings)
        self._server_class = ReusePortServer if reuse_port else ThreadedAssociationServer
        self.server: ThreadedAssociationServer | None = None

    def start(self) -> ThreadedAssociationServer:
        """Start listening in a background thread; returns the server (its port is bound)."""
        remove_dead_transfers(self.settings.incoming_dir)
        self.dispatcher.start()
        self.server = self.ae.make_server(
            (self.settings.dicom_host, self.settings.dicom_port),
            evt_handlers=event_handlers(self.ingest, self.log),
            server_class=self._server_class,
        )
        self.ae._servers.append(self.server)  # as AE.start_server does, so AE.shutdown stops it
        thread = threading.Thread(target=self.server.serve_forever, name="scp", daemon=True)
        thread.start()
        LOGGER.info(
            "%s listening on %s:%s (pid %s)",
            self.settings.ae_title,
            self.settings.dicom_host,
            self.server.server_address[1],
            os.getpid(),
        )
        return self.server

    def stop(self) -> None:
        self.ae.shutdown()
        self.ingest.stop()
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.dispatcher.stop()
        self.engine.dispose()


def _serve_until_signalled(settings: Settings, reuse_port: bool) -> None:
    gateway = Gateway(settings, reuse_port=reuse_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    gateway.start()
    stop.wait()
    LOGGER.info("gateway stopping")
    gateway.stop()


def serve(settings: Settings) -> None:
    """Run the gateway until SIGTERM/SIGINT, in ``settings.gateway_processes`` processes."""
    if settings.gateway_processes == 1:
        _serve_until_signalled(settings, reuse_port=False)
        return
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_serve_until_signalled, args=(settings, True), name=f"gateway-{index}"
        )
        for index in range(settings.gateway_processes)
    ]
    for process in processes:
        process.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()
