"""The whole ingest pipeline, on the embedded default and on Redis + PostgreSQL: DCMTK storescu
sends real chest radiographs, the gateway stores and queues them, a Celery worker decodes them."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from core.settings import Settings
from db.models import Instance, Job
from tests.node import Node, storescu
from worker.model import ModelCard


def test_received_radiographs_are_decoded_by_the_worker(
    node: Node, dicom_samples_dir: Path, labelled_dicom_dir: Path
) -> None:
    files = [
        p for p in sorted(dicom_samples_dir.glob("*.dcm")) if p.read_bytes()[128:132] == b"DICM"
    ]
    files += sorted(labelled_dicom_dir.glob("01[2-5]_*.dcm"))  # one of each encoding A-D
    with node.gateway(), node.worker():
        sent = storescu(node.dicom_port, *files)
        assert sent.returncode == 0, sent.stderr
        jobs = node.wait_for_jobs(len(files), {"done", "failed", "skipped"})

    size = ModelCard.read(Settings().model_path).input_size
    assert len(jobs) == len(files)
    assert [job.state for job in jobs] == ["done"] * len(files), [j.reason for j in jobs]
    for job in jobs:
        assert job.outcome is not None
        assert job.outcome["shape"] == [size, size, 1]
        assert 0.1 < job.outcome["mean"] < 0.9, job.outcome
        assert job.attempts == 1
        assert job.queued_at is not None
        assert job.processing_at is not None
        assert job.done_at is not None
        assert job.received_at <= job.queued_at <= job.processing_at <= job.done_at
        assert set(job.outcome["timings_ms"]) == {"read", "decode", "preprocess", "infer"}

    outcomes = [job.outcome for job in jobs if job.outcome is not None]
    # The same pixels twice (same SOP Instance UID, so two versions), one header saying
    # MONOCHROME1: the worker shows that one inverted.
    uid = dcmread(dicom_samples_dir / "siim_cr_chest_jpeg_baseline.dcm").SOPInstanceUID
    versions = node.scalars(
        select(Job.outcome).join(Instance).where(Instance.sop_instance_uid == uid)
    )
    assert len(versions) == 2
    by_photometric = {o["photometric_interpretation"]: float(o["mean"]) for o in versions}
    assert abs(by_photometric["MONOCHROME1"] - (1 - by_photometric["MONOCHROME2"])) < 0.01
    # Every transfer syntax of the samples was decoded.
    syntaxes = {o["transfer_syntax_uid"] for o in outcomes}
    assert {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.5",
    } <= syntaxes
