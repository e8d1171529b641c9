"""What the gateway reads from a received header, on files written by pydicom."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dicom_gateway.validation import inspect_received


def write_header_only(path: Path, **attributes: str) -> Dataset:
    """A Comprehensive SR (not an image SOP class, so no pixel data needed) with ``attributes``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.33")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_text_values_are_kept_as_sent_within_their_vr_lengths(tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    ds = write_header_only(
        path,
        Modality="sr",
        BodyPartExamined="chest wall and upper abdomen",  # not a CS value: longer than 16
        Manufacturer="ACME Imaging " * 6,
        PatientID="P-001",
        PatientName="Doe^Jane",
        AccessionNumber="ACC0000000000000042",  # SH is at most 16
        StudyDate="20261204",
    )
    header = inspect_received(path, ds.SOPClassUID, ds.SOPInstanceUID)

    assert (header.modality, header.body_part_examined) == ("SR", "CHEST WALL AND U")
    assert header.view_position is None
    assert header.manufacturer == ("ACME Imaging " * 6)[:64].strip()
    assert header.study.patient_id == "P-001"
    assert header.study.patient_name == "Doe^Jane"
    assert header.study.accession_number == "ACC0000000000000"
    assert header.study.study_date == "20261204"
    assert header.study.study_description is None
