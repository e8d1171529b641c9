"""Results back to PACS, end to end, with Orthanc as the PACS.

A real chest radiograph is uploaded to Orthanc; Orthanc sends it to the gateway with its REST API;
the worker infers; the SR appears in Orthanc in the same study; findings, results, flags and
deliveries are in the database. Run on Redis + PostgreSQL and on the embedded default.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from db.models import Delivery, Finding, Flag, FlagEvent, Job, Report, StudyResult
from tests.node import Node
from tests.senders import association, send_raw
from tests.servers import OrthancServer, wait_until

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
PNEUMONIA_IMAGE = "015_D_CR_pneumonia.dcm"
NORMAL_IMAGE = "003_D_CR_normal.dcm"


def srs_in(pacs: OrthancServer, study_instance_uid: str) -> list[Any]:
    """Datasets of the SRs Orthanc holds for a study."""
    found = []
    for instance in pacs.study_instances(study_instance_uid):
        ds = dcmread(io.BytesIO(pacs.instance_file(instance["ID"])))
        if ds.SOPClassUID == COMPREHENSIVE_3D_SR:
            found.append(ds)
    return found


def sent(node: Node) -> list[Delivery]:
    return node.scalars(select(Delivery).where(Delivery.outcome == "sent"))


@pytest.fixture
def pacs(tmp_path: Path, node: Node) -> Iterator[OrthancServer]:
    """Orthanc knowing the node as modality ``cxr``, and the node sending SRs to Orthanc."""
    server = OrthancServer(
        tmp_path / "orthanc", modalities={"cxr": ("CXR_TRIAGE", "127.0.0.1", node.dicom_port)}
    )
    server.start()
    node.configure(
        {
            "destinations": [
                {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                 "port": server.dicom_port, "outputs": ["sr"]}
            ],
            "delivery": {"backoff_seconds": 0.5, "max_attempts": 12, "timeout_seconds": 10},
        }
    )
    yield server
    if server.process is not None:
        server.stop()


def with_study(source: Path, target: Path, study_instance_uid: str) -> Path:
    """A copy of a real radiograph moved into another study (new series and SOP UIDs)."""
    ds = dcmread(source)
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return target


def test_sr_returns_to_pacs_in_the_same_study(
    node: Node, pacs: OrthancServer, labelled_dicom_dir: Path
) -> None:
    source = labelled_dicom_dir / PNEUMONIA_IMAGE
    original = dcmread(source, stop_before_pixels=True)
    orthanc_id = pacs.upload(source)
    with node.gateway(), node.worker():
        pacs.send_to("cxr", [orthanc_id])
        wait_until(lambda: len(sent(node)) == 1, 120, "the SR delivered")

    (sr,) = srs_in(pacs, original.StudyInstanceUID)
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    assert sr.PatientID == original.PatientID
    assert sr.SeriesInstanceUID != original.SeriesInstanceUID
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.Manufacturer == "cxr-triage"
    referenced = {item.ReferencedSOPInstanceUID
                  for study in sr.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence
                  for item in series.ReferencedSOPSequence}
    assert referenced == {original.SOPInstanceUID}
    (finding,) = node.scalars(select(Finding))
    (result,) = node.scalars(select(StudyResult))
    assert result.instance_ids == [finding.instance_id]
    assert result.probability == pytest.approx(finding.probability)
    assert result.complete_by == "released"
    (group,) = report.content.get_planar_roi_measurement_groups() or report.content.get_image_measurement_groups()
    assert group.get_measurements()[0].value == pytest.approx(finding.probability, abs=1e-6)
    (stored,) = node.scalars(select(Report))
    assert stored.sop_instance_uid == sr.SOPInstanceUID
    (delivery,) = node.scalars(select(Delivery))
    assert (delivery.outcome, delivery.status, delivery.attempt) == ("sent", 0, 1)
    flags = node.scalars(select(Flag))
    assert [flag.positive for flag in flags] == ([True] if result.positive else [])
    assert set(finding.timings_ms) >= {"decode", "preprocess", "infer"}
