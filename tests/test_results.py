"""Results back to PACS, end to end, with Orthanc as the PACS.

A real chest radiograph is uploaded to Orthanc; Orthanc sends it to the gateway with its REST API;
the worker infers; the SR appears in Orthanc in the same study; findings, results, flags and
deliveries are in the database. Run on Redis + PostgreSQL and on the embedded default.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from sqlalchemy import select

from db.models import Delivery, Finding, Flag, FlagEvent, Job, Report, Study, StudyResult
from tests.node import Node, storescu
from tests.senders import association, send_raw
from tests.servers import OrthancServer, free_port, wait_until

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
PNEUMONIA_IMAGE = "015_D_CR_pneumonia.dcm"
NORMAL_IMAGE = "003_D_CR_normal.dcm"
SITE_UID_ROOT = "1.2.840.99999."
"""A UID root of our own, as a site configures it (CXR_UID_ROOT)."""


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
            "destinations": [server.destination("pacs", outputs=["sr"])],
            "delivery": {"backoff_seconds": 0.5, "max_attempts": 12, "timeout_seconds": 10},
        }
    )
    yield server
    if server.process is not None:
        server.stop()


@contextlib.contextmanager
def rejecting_scp(status: int) -> Iterator[int]:
    """A DICOM peer that answers every C-STORE with ``status``; yields its port."""
    ae = AE(ae_title="PICKY")
    ae.add_supported_context(COMPREHENSIVE_3D_SR, ALL_TRANSFER_SYNTAXES)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda _: status)]
    )
    assert server is not None
    try:
        yield port
    finally:
        server.shutdown()


def with_study(source: Path, target: Path, study_instance_uid: str, patient_id: str) -> Path:
    """A copy of a real radiograph moved into another patient's study (new series and SOP)."""
    ds = dcmread(source)
    ds.PatientID = ds.PatientName = patient_id
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return target


def test_sr_returns_to_pacs_in_the_same_study(
    node: Node, pacs: OrthancServer, labelled_dicom_dir: Path, tmp_path: Path
) -> None:
    node.configure({"destinations": [pacs.destination("pacs", outputs=["sr", "sc"])]})
    node.extra_env["CXR_UID_ROOT"] = SITE_UID_ROOT
    source = labelled_dicom_dir / PNEUMONIA_IMAGE
    original = dcmread(source, stop_before_pixels=True)
    orthanc_id = pacs.upload(source)
    with node.gateway(), node.worker():
        pacs.send_to("cxr", [orthanc_id])
        wait_until(lambda: len(sent(node)) == 2, 120, "the SR and the SC delivered")

    (sr,) = srs_in(pacs, original.StudyInstanceUID)
    (sc,) = [
        dcmread(io.BytesIO(pacs.instance_file(instance["ID"])))
        for instance in pacs.study_instances(original.StudyInstanceUID)
        if instance["MainDicomTags"]["SOPInstanceUID"]
        not in (sr.SOPInstanceUID, original.SOPInstanceUID)
    ]
    assert sc.SOPClassUID == SECONDARY_CAPTURE
    assert (sc.Manufacturer, sc.BurnedInAnnotation, sc.SamplesPerPixel) == ("cxr-triage", "YES", 3)
    sc_file = tmp_path / "sc.dcm"
    sc.save_as(sc_file)
    verified = subprocess.run(["dciodvfy", str(sc_file)], capture_output=True, text=True)
    assert not [line for line in verified.stderr.splitlines() if line.startswith("Error")]
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    assert sr.PatientID == original.PatientID
    assert sr.SeriesInstanceUID != original.SeriesInstanceUID
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.Manufacturer == "cxr-triage"
    referenced = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == {original.SOPInstanceUID}
    (finding,) = node.scalars(select(Finding))
    (result,) = node.scalars(select(StudyResult))
    assert result.instance_ids == [finding.instance_id]
    assert result.probability == pytest.approx(finding.probability)
    assert result.complete_by == "released"
    content = cast(hd.sr.MeasurementReport, report.content)
    (group,) = content.get_image_measurement_groups()
    assert group.get_measurements()[0].value == pytest.approx(finding.probability, abs=1e-6)
    reports = {r.kind: r.sop_instance_uid for r in node.scalars(select(Report))}
    assert reports == {"sr": sr.SOPInstanceUID, "sc": sc.SOPInstanceUID}
    created = (sr.SOPInstanceUID, sr.SeriesInstanceUID, sc.SOPInstanceUID, sc.SeriesInstanceUID)
    assert all(uid.startswith(SITE_UID_ROOT) for uid in created)
    deliveries = node.scalars(select(Delivery))
    assert [(d.outcome, d.status, d.attempt) for d in deliveries] == [("sent", 0, 1)] * 2
    flags = node.scalars(select(Flag))
    assert [flag.positive for flag in flags] == ([True] if result.positive else [])
    assert set(finding.timings_ms) >= {"decode", "preprocess", "infer"}


def test_pacs_outage_delays_the_sr_without_rerunning_inference(
    node: Node, pacs: OrthancServer, labelled_dicom_dir: Path
) -> None:
    source = labelled_dicom_dir / PNEUMONIA_IMAGE
    study_uid = dcmread(source, stop_before_pixels=True).StudyInstanceUID
    orthanc_id = pacs.upload(source)
    with node.gateway(), node.worker():
        pacs.send_to("cxr", [orthanc_id])
        pacs.stop()  # the PACS goes down before the SR is due
        wait_until(lambda: len(node.scalars(select(Delivery))) >= 3, 60, "three failed attempts")
        pacs.start()
        wait_until(lambda: len(sent(node)) == 1, 120, "the SR delivered after the outage")

    attempts = node.scalars(select(Delivery).order_by(Delivery.attempt))
    assert [a.attempt for a in attempts] == list(range(1, len(attempts) + 1))
    assert [a.outcome for a in attempts] == ["retrying"] * (len(attempts) - 1) + ["sent"]
    for failed in attempts[:-1]:
        assert failed.status is None
        assert failed.error and "unreachable" in failed.error
    waits = [(b.started_at - a.finished_at).total_seconds() for a, b in pairwise(attempts)]
    assert all(later >= earlier * 1.5 for earlier, later in pairwise(waits[:3]))  # backoff
    assert len(srs_in(pacs, study_uid)) == 1
    (job,) = node.scalars(select(Job))
    assert job.attempts == 1  # inference ran once
    assert len(node.scalars(select(Finding))) == 1


def test_a_destination_that_rejects_gets_a_failed_delivery_with_its_status(
    node: Node, pacs: OrthancServer, labelled_dicom_dir: Path, tmp_path: Path
) -> None:
    with rejecting_scp(status=0xA900) as port:
        node.configure(
            {
                "destinations": [
                    pacs.destination("pacs"),
                    {"name": "picky", "ae_title": "PICKY", "host": "127.0.0.1", "port": port},
                ],
                "delivery": {"backoff_seconds": 0.5, "max_attempts": 5},
            }
        )
        orthanc_id = pacs.upload(labelled_dicom_dir / NORMAL_IMAGE)
        with node.gateway(), node.worker():
            pacs.send_to("cxr", [orthanc_id])
            wait_until(lambda: len(node.scalars(select(Delivery))) == 2, 120, "both deliveries")
    by_destination = {d.destination: d for d in node.scalars(select(Delivery))}
    assert by_destination["pacs"].outcome == "sent"
    rejected = by_destination["picky"]
    assert (rejected.outcome, rejected.status, rejected.attempt) == ("failed", 0xA900, 1)


def test_a_later_image_revises_the_result_the_sr_and_the_flag(
    node: Node, pacs: OrthancServer, labelled_dicom_dir: Path, tmp_path: Path
) -> None:
    study_uid = generate_uid()
    first = with_study(
        labelled_dicom_dir / PNEUMONIA_IMAGE, tmp_path / "first.dcm", study_uid, "PAT-0001"
    )
    second = with_study(
        labelled_dicom_dir / NORMAL_IMAGE, tmp_path / "second.dcm", study_uid, "PAT-0001"
    )
    with node.gateway(), node.worker():
        first_id = pacs.upload(first)
        pacs.send_to("cxr", [first_id])
        wait_until(lambda: len(sent(node)) == 1, 120, "the first SR")
        second_id = pacs.upload(second)
        pacs.send_to("cxr", [second_id])  # another association, after the result
        wait_until(lambda: len(sent(node)) == 2, 120, "the revised SR")

    results = node.scalars(select(StudyResult).order_by(StudyResult.version))
    assert [r.version for r in results] == [1, 2]
    assert len(results[0].instance_ids) == 1 and len(results[1].instance_ids) == 2
    assert results[1].probability == pytest.approx(
        max(f.probability for f in node.scalars(select(Finding)))
    )
    first_sr, revised_sr = sorted(srs_in(pacs, study_uid), key=lambda ds: int(ds.InstanceNumber))
    assert revised_sr.SeriesInstanceUID == first_sr.SeriesInstanceUID
    predecessors = [
        item.ReferencedSOPInstanceUID
        for study in revised_sr.PredecessorDocumentsSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    ]
    assert predecessors == [first_sr.SOPInstanceUID]
    (flag,) = node.scalars(select(Flag))
    assert flag.study_result_id == results[1].id
    assert flag.state == "new"
    events = node.scalars(select(FlagEvent).order_by(FlagEvent.id))
    assert [(e.event, e.study_result_id) for e in events] == [
        ("raised", results[0].id),
        ("revised", results[1].id),
    ]


def test_an_aborted_association_is_reported_only_once_the_study_is_quiet(
    node: Node, pacs: OrthancServer, labelled_dicom_dir: Path
) -> None:
    node.extra_env["CXR_STUDY_QUIET_SECONDS"] = "4"
    with node.gateway(), node.worker("--beat"):
        with association(node.dicom_port) as assoc:
            assert send_raw(assoc, labelled_dicom_dir / PNEUMONIA_IMAGE)[0] == 0
            assoc.abort()
        wait_until(lambda: len(sent(node)) == 1, 60, "the SR once the study is quiet")
    # Kept, and reported only by the quiet rule (whenever inference finished): never released.
    (result,) = node.scalars(select(StudyResult))
    assert result.complete_by == "quiet"
    (study,) = node.scalars(select(Study))
    assert study.released_at is None
    assert (result.created_at - study.last_received_at).total_seconds() >= 4


def test_routing_forwards_positive_studies_and_nothing_loops(
    node: Node, pacs: OrthancServer, labelled_dicom_dir: Path, tmp_path: Path
) -> None:
    urgent = OrthancServer(
        tmp_path / "urgent",
        ae_title="URGENT",
        modalities={"cxr": ("CXR_TRIAGE", "127.0.0.1", node.dicom_port)},
    )
    urgent.start()
    try:
        node.configure(
            {
                "destinations": [
                    pacs.destination("pacs"),
                    urgent.destination("urgent", outputs=[]),
                ],
                "routing": [
                    {
                        "name": "positive chest to urgent reading",
                        "when": {"positive": True, "attributes": {"Modality": ["CR", "DX"]}},
                        "forward": ["originals", "sr"],
                        "to": ["urgent"],
                    },
                ],
            }
        )
        pneumonia = dcmread(labelled_dicom_dir / PNEUMONIA_IMAGE, stop_before_pixels=True)
        normal = dcmread(labelled_dicom_dir / NORMAL_IMAGE, stop_before_pixels=True)
        with node.gateway(), node.worker():
            pacs.send_to(
                "cxr",
                [
                    pacs.upload(labelled_dicom_dir / PNEUMONIA_IMAGE),
                    pacs.upload(labelled_dicom_dir / NORMAL_IMAGE),
                ],
            )
            wait_until(lambda: len(sent(node)) == 4, 120, "two SRs to the PACS, SR + original")
            urgent_ids = [i["ID"] for i in urgent.study_instances(pneumonia.StudyInstanceUID)]
            # The urgent reading station sends everything back: nothing is processed again.
            urgent.send_to("cxr", urgent_ids)
            wait_until(lambda: len(node.scalars(select(Job))) == 3, 30, "the returned SR's job")
        assert urgent.study_instances(normal.StudyInstanceUID) == []  # negative: not forwarded
        kinds = sorted(d.kind for d in sent(node) if d.destination == "urgent")
        assert kinds == ["original", "sr"]
        jobs = node.scalars(select(Job).order_by(Job.id))
        assert [job.state for job in jobs] == ["done", "done", "skipped"]
        assert jobs[2].reason == "produced by cxr-triage"
        assert len(node.scalars(select(StudyResult))) == 2
    finally:
        urgent.stop()


def test_a_study_mixing_two_patients_gets_no_report_and_says_why(
    embedded_node: Node, labelled_dicom_dir: Path, tmp_path: Path
) -> None:
    """Two patients under one Study Instance UID: the SR would be wrong, so none is made."""
    study_uid = generate_uid()
    images = [
        with_study(labelled_dicom_dir / PNEUMONIA_IMAGE, tmp_path / "a.dcm", study_uid, "PAT-A"),
        with_study(labelled_dicom_dir / NORMAL_IMAGE, tmp_path / "b.dcm", study_uid, "PAT-B"),
    ]
    node = embedded_node
    node.configure(
        {
            "destinations": [
                {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}
            ]
        }
    )
    with node.gateway(), node.worker():
        assert storescu(node.dicom_port, *images).returncode == 0
        wait_until(
            lambda: (
                [r.report_error for r in node.scalars(select(StudyResult))] != [None]
                and len(node.scalars(select(StudyResult))) == 1
            ),
            120,
            "the result with its report error",
        )
    (result,) = node.scalars(select(StudyResult))
    assert result.report_error is not None and "PatientID" in result.report_error
    assert node.scalars(select(Report)) == []
