"""A C-STORE client (Storage SCU, PS3.4 B.2.1) for files and folders: ``cxr-triage send``.

Files are sent as they are on disk (their data set bytes, in their own transfer syntax), so the
receiver gets exactly what the file holds. Each file's SOP class and transfer syntax become a
presentation context; more than 128 distinct pairs (PS3.8 9.3.2.2) are sent over several
associations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context

from dicom_gateway.statuses import is_out_of_resources, is_stored

LOGGER = logging.getLogger(__name__)
MAX_CONTEXTS = 128
REJECTED_PERMANENT = 0x01


@dataclass(frozen=True)
class SendResult:
    """The outcome of one file: the peer's status, or why it was not sent.

    ``transient`` says whether trying again later may succeed: no connection, a transient
    association rejection, no response, or Refused: Out of Resources (0xA7xx). A permanent
    rejection or another failure status will not change by itself.
    """

    path: Path
    status: int | None
    error: str | None = None
    transient: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and is_stored(self.status)


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and every file below each given folder, in a stable order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            files.append(path)
    return files


def _context_key(path: Path) -> tuple[str, str]:
    ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    return str(ds.file_meta.MediaStorageSOPClassUID), str(ds.file_meta.TransferSyntaxUID)


def _batches(
    keyed: list[tuple[Path, tuple[str, str]]],
) -> Iterator[tuple[list[tuple[str, str]], list[Path]]]:
    """Groups of files whose (SOP class, transfer syntax) pairs fit one association."""
    contexts: list[tuple[str, str]] = []
    files: list[Path] = []
    for path, key in keyed:
        if key not in contexts:
            if len(contexts) == MAX_CONTEXTS:
                yield contexts, files
                contexts, files = [], []
            contexts.append(key)
        files.append(path)
    if files:
        yield contexts, files


def send_files(
    paths: Iterable[Path],
    host: str,
    port: int,
    called_ae_title: str,
    calling_ae_title: str = "CXR_SEND",
    on_result: Callable[[SendResult], None] | None = None,
    timeout: float = 60.0,
) -> list[SendResult]:
    """Send every file; returns one result per file, in order (also passed to ``on_result``)."""
    results: list[SendResult] = []

    def record(result: SendResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    keyed: list[tuple[Path, tuple[str, str]]] = []
    for path in paths:
        try:
            keyed.append((path, _context_key(path)))
        except (InvalidDicomError, AttributeError, OSError) as exc:
            record(SendResult(path, None, f"not a DICOM file: {exc}"))

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for contexts, files in _batches(keyed):
        ae.requested_contexts = [build_context(sop, [syntax]) for sop, syntax in contexts]
        assoc = ae.associate(host, port, ae_title=called_ae_title)
        if not assoc.is_established:
            error, transient = _association_failure(assoc)
            for path in files:
                record(SendResult(path, None, error, transient))
            continue
        try:
            for path in files:
                record(_send_one(assoc, path))
        finally:
            if assoc.is_established:
                assoc.release()
    return results


def _association_failure(assoc: Any) -> tuple[str, bool]:
    """Why no association, and whether that may pass (PS3.8 7.1.1.9: result 1 is permanent)."""
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        result, source, reason = primitive.result, primitive.result_source, primitive.diagnostic
        kind = "permanently" if result == REJECTED_PERMANENT else "transiently"
        return f"association rejected {kind} (source {source}, reason {reason})", (
            result != REJECTED_PERMANENT
        )
    return "peer unreachable (no connection, no answer, or aborted)", True


def _send_one(assoc: Any, path: Path) -> SendResult:
    try:
        response = assoc.send_c_store(path)
    except (ValueError, OSError, InvalidDicomError) as exc:
        return SendResult(path, None, str(exc))
    status = getattr(response, "Status", None)
    if status is None:
        return SendResult(path, None, "no response (timeout or association aborted)", True)
    comment = getattr(response, "ErrorComment", None)
    return SendResult(
        path,
        int(status),
        str(comment) if comment else None,
        transient=is_out_of_resources(int(status)),
    )
