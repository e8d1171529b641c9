"""pynetdicom senders for the tests, including ones that send what a broken modality would."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config
from pynetdicom.presentation import build_context

DIGITAL_XRAY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


@contextlib.contextmanager
def association(
    port: int,
    sop_classes: tuple[str, ...] = (DIGITAL_XRAY_FOR_PRESENTATION, CR_IMAGE_STORAGE),
    calling: str = "PYNETDICOM",
) -> Iterator[Any]:
    """An association proposing ``sop_classes`` in common transfer syntaxes; released on exit.

    Each (SOP class, transfer syntax) pair is its own presentation context: an acceptor picks one
    transfer syntax per context (PS3.8 9.3.3.2).
    """
    ae = AE(ae_title=calling)
    ae.requested_contexts = [
        build_context(uid, [syntax]) for uid in sop_classes for syntax in ALL_TRANSFER_SYNTAXES[:8]
    ]
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_TRIAGE")
    assert assoc.is_established, "association not established"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def send_raw(assoc: Any, path: Path) -> tuple[int | None, str]:
    """Send a file's data set bytes unchanged (pynetdicom's chunked send).

    Returns the response status (None when there was no response) and its Error Comment. The
    presentation context is chosen from the File Meta Information, so a file whose meta and data
    set disagree is sent as it is.
    """
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        response = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    status = int(response.Status) if "Status" in response else None
    return status, str(response.get("ErrorComment", ""))


def chest_dx(rows: int = 64, columns: int = 64, **overrides: Any) -> Dataset:
    """A small, valid Digital X-Ray image of a chest, with fresh UIDs."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = DIGITAL_XRAY_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientID = "TEST-0001"
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(256)) * (rows * columns // 256) + bytes(rows * columns % 256)
    for keyword, value in overrides.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", DIGITAL_XRAY_FOR_PRESENTATION)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def write_unchecked(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` even when its values break the standard (as a broken sender would).

    The File Meta Information is written as it is, even when it disagrees with the data set.
    """
    previous = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    ds.preamble = b"\0" * 128
    try:
        ds.save_as(path, enforce_file_format=False)
    finally:
        pydicom_config.settings.writing_validation_mode = previous
    return path
