"""The spool: received objects on disk, written so that an acknowledged object survives a crash.

An object arrives in a temporary file under ``spool/.incoming`` (pynetdicom writes it as the PDUs
arrive). Before we answer success it is fsynced, renamed into
``spool/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` and the directory is fsynced,
so the rename itself is durable.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dicom_gateway.validation import dataset_offset, is_valid_uid

COMPARE_CHUNK = 1 << 20


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


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_into_spool(temporary: Path, spool: Path, relative: Path) -> Path:
    """Durably rename an fsynced temporary file to ``spool / relative``; returns the final path."""
    final = spool / relative
    directory = final.parent
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        _fsync_directory(directory.parent)
        _fsync_directory(directory.parent.parent)
    os.replace(temporary, final)
    _fsync_directory(directory)
    return final


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def has_room(path: Path, reserve_bytes: int) -> bool:
    """Whether the file system holding ``path`` has more than ``reserve_bytes`` free."""
    return free_bytes(path) > reserve_bytes
