"""The spool: received objects on disk, written so that an acknowledged object survives a crash.

An object arrives in a temporary file under ``spool/.incoming`` (pynetdicom writes it as the PDUs
arrive). Before we answer success it is renamed into
``spool/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` and the file system is flushed
(``syncfs``), so the bytes and the rename survive a crash (see ``group_commit``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import shutil
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dicom_gateway.validation import dataset_offset, is_valid_uid

COMPARE_CHUNK = 1 << 20
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def relative_path(study_uid: str, series_uid: str, sop_uid: str, version: int) -> Path:
    """Where an object lives, relative to the spool. Versions after the first get a suffix.

    The UIDs must be valid UI values (digits and dots), so no path can leave the spool.
    """
    for uid in (study_uid, series_uid, sop_uid):
        if not is_valid_uid(uid):
            raise ValueError(f"not a valid UID: {uid!r}")
    name = f"{sop_uid}.dcm" if version == 1 else f"{sop_uid}.v{version}.dcm"
    return Path(study_uid) / series_uid / name


def same_data_set(received: Path, received_offset: int, stored: Path) -> bool:
    """Whether two files hold the same data set bytes (their File Meta may differ).

    Only resent objects are compared, so new objects cost no hashing on the receive path.
    """
    with received.open("rb") as new, stored.open("rb") as old:
        old_offset = dataset_offset(old)
        if received.stat().st_size - received_offset != stored.stat().st_size - old_offset:
            return False
        new.seek(received_offset)
        old.seek(old_offset)
        while chunk := new.read(COMPARE_CHUNK):
            if chunk != old.read(len(chunk)):
                return False
    return True


def move_into_spool(temporary: Path, spool: Path, relative: Path) -> Path:
    """Rename a received file to ``spool / relative``; returns the final path.

    Not yet durable: ``sync_filesystem`` makes the bytes and the new directory entries durable.
    """
    final = spool / relative
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temporary, final)
    return final


def sync_filesystem(path: Path) -> None:
    """Flush the file system holding ``path``: file data and metadata, directory entries.

    One ``syncfs(2)`` covers every object moved into the spool since the last flush, where an
    fsync per file and per directory would cost several flushes per object.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC.syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), str(path))
    finally:
        os.close(fd)


class StripedLock:
    """Exclusive locks on keys, shared by every thread and process using the same directory.

    Keys hash onto a fixed set of lock files (``flock``), so unrelated keys rarely wait on each
    other and no lock file is ever created per key.
    """

    def __init__(self, directory: Path, stripes: int = 64) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._paths = [directory / f"{index:02d}.lock" for index in range(stripes)]

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        stripe = zlib.crc32(key.encode()) % len(self._paths)
        fd = os.open(self._paths[stripe], os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def has_room(path: Path, reserve_bytes: int) -> bool:
    """Whether the file system holding ``path`` has more than ``reserve_bytes`` free."""
    return free_bytes(path) > reserve_bytes
