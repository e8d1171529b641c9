"""The gateway against real DICOM peers: DCMTK storescu/echoscu and pynetdicom senders.

The gateway runs as its own process on the embedded default; these tests need no worker (jobs
stay ``queued``), the pipeline tests add one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import UID
from pynetdicom import AE
from sqlalchemy import select

from db.models import Association, Instance, Job, Study
from dicom_gateway.statuses import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from dicom_gateway.store_scp import VERIFICATION_SOP_CLASS, remove_dead_transfers
from dicom_gateway.store_scu import send_files
from tests.node import DCMTK_ENV, Node, echo, storescu
from tests.senders import (
    CR_IMAGE_STORAGE,
    association,
    chest_dx,
    send_raw,
    write_unchecked,
)
from tests.servers import wait_until

PYDICOM_SYNTAX_SAMPLES = [
    "JPEG-LL.dcm",  # JPEG Lossless, first-order prediction
    "JPEG-lossy.dcm",  # JPEG Extended, 12-bit
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "MR_small_RLE.dcm",  # RLE Lossless
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "JPEG2000.dcm",  # JPEG 2000
]


def dataset_bytes(path: Path) -> bytes:
    """The data set part of a DICOM file: after its File Meta Information (PS3.10 7.1), which is
    Explicit VR Little Endian and may lack its group length."""
    data = path.read_bytes()
    position = 132
    while int.from_bytes(data[position : position + 2], "little") == 0x0002:
        if data[position + 4 : position + 6] in (b"OB", b"UN", b"UT", b"SQ", b"OW"):
            position += 12 + int.from_bytes(data[position + 8 : position + 12], "little")
        else:
            position += 8 + int.from_bytes(data[position + 6 : position + 8], "little")
    return data[position:]


def spooled(node: Node) -> dict[str, Path]:
    """Stored files by SOP Instance UID (first version)."""
    rows = node.query(select(Instance.sop_instance_uid, Instance.path).where(Instance.version == 1))
    return {uid: node.spool / path for uid, path in rows}


def partial_files(spool: Path) -> list[Path]:
    """Files being received (or left half-received) in the gateway processes' directories."""
    return [path for path in (spool / ".incoming").rglob("*") if path.is_file()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pydicom_samples() -> list[Path]:
    paths = [get_testdata_file(name) for name in PYDICOM_SYNTAX_SAMPLES]
    if any(path is None for path in paths):
        pytest.skip("pydicom-data samples not installed (pip install pydicom-data)")
    return [Path(str(path)) for path in paths]


def test_every_transfer_syntax_is_stored_byte_identical(
    embedded_node: Node, dicom_samples_dir: Path, labelled_dicom_dir: Path
) -> None:
    files = [
        p for p in sorted(dicom_samples_dir.glob("*.dcm")) if p.read_bytes()[128:132] == b"DICM"
    ]
    files += sorted(labelled_dicom_dir.glob("00[0-3]_*.dcm")) + pydicom_samples()
    syntaxes = {str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in files}
    assert len(syntaxes) >= 11, sorted(UID(s).name for s in syntaxes)

    with embedded_node.gateway():
        results = send_files(files, "127.0.0.1", embedded_node.dicom_port, "CXR_TRIAGE")
        assert [r.status for r in results] == [SUCCESS] * len(files), results

    rows = embedded_node.query(
        select(Instance.sop_instance_uid, Instance.path, Instance.transfer_syntax_uid)
    )
    assert len(rows) == len(files)
    stored = {dataset_bytes(embedded_node.spool / path): syntax for _, path, syntax in rows}
    for source in files:
        syntax = stored.get(dataset_bytes(source))
        assert syntax is not None, f"{source.name} not stored byte-identical"
        assert syntax == str(dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    # The stored files are valid DICOM files that keep their transfer syntax.
    for _, path, syntax in rows:
        assert str(dcmread(embedded_node.spool / path).file_meta.TransferSyntaxUID) == syntax


def test_dcmtk_storescu_and_echoscu(embedded_node: Node, labelled_dicom_dir: Path) -> None:
    files = sorted(labelled_dicom_dir.glob("*.dcm"))
    with embedded_node.gateway():
        echoed = subprocess.run(
            [
                "echoscu",
                "-aet",
                "ECHOSCU",
                "-aec",
                "CXR_TRIAGE",
                "127.0.0.1",
                str(embedded_node.dicom_port),
            ],
            env={**os.environ, **DCMTK_ENV},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert echoed.returncode == 0, echoed.stderr
        sent = storescu(embedded_node.dicom_port, *files)
        assert sent.returncode == 0, sent.stderr

    stored = spooled(embedded_node)
    assert len(stored) == len(files)
    for source in files:
        original = dcmread(source)
        copy = dcmread(stored[original.SOPInstanceUID])
        assert copy.PixelData == original.PixelData
        assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert copy.StudyInstanceUID == original.StudyInstanceUID
    # Paths follow <Study>/<Series>/<SOP>.dcm.
    original = dcmread(files[0], stop_before_pixels=True)
    assert stored[original.SOPInstanceUID] == (
        embedded_node.spool
        / original.StudyInstanceUID
        / original.SeriesInstanceUID
        / f"{original.SOPInstanceUID}.dcm"
    )
    audits = embedded_node.scalars(
        select(Association).where(Association.calling_ae_title == "STORESCU")
    )
    assert len(audits) == 4  # one association per transfer syntax
    assert sum(a.instances_received for a in audits) == 24
    for audit in audits:
        assert (audit.outcome, audit.instances_refused) == ("released", 0)
        assert audit.called_ae_title == "CXR_TRIAGE" and audit.peer_address == "127.0.0.1"
        assert audit.ended_at is not None and audit.ended_at >= audit.started_at
    echo_audit = embedded_node.scalars(
        select(Association).where(Association.calling_ae_title == "ECHOSCU")
    )
    assert [a.outcome for a in echo_audit] == ["released"]


def test_selection_queues_chest_radiographs_and_records_every_skip(
    embedded_node: Node, dicom_samples_dir: Path, tmp_path: Path
) -> None:
    lateral = write_unchecked(chest_dx(ViewPosition="LL"), tmp_path / "lateral.dcm")
    knee = write_unchecked(chest_dx(BodyPartExamined="KNEE"), tmp_path / "knee.dcm")
    ours = write_unchecked(chest_dx(Manufacturer="cxr-triage"), tmp_path / "ours.dcm")
    no_view = write_unchecked(
        chest_dx(ViewPosition=None, BodyPartExamined=None), tmp_path / "bare.dcm"
    )
    mr = pydicom_samples()[2]
    with embedded_node.gateway():
        results = send_files(
            [lateral, knee, ours, no_view, mr, dicom_samples_dir / "nih_dx_chest_implicit_vr.dcm"],
            "127.0.0.1",
            embedded_node.dicom_port,
            "CXR_TRIAGE",
        )
        assert all(r.status == SUCCESS for r in results), results
        wait_until(
            lambda: len(embedded_node.scalars(select(Job).where(Job.state == "queued"))) == 2,
            20,
            "two jobs queued",
        )
    reasons = {
        uid: (state, reason)
        for uid, state, reason in embedded_node.query(
            select(Instance.sop_instance_uid, Job.state, Job.reason).join(Job)
        )
    }

    def of(path: Path) -> tuple[str, str | None]:
        return reasons[dcmread(path, stop_before_pixels=True).SOPInstanceUID]

    assert of(lateral) == ("skipped", "view position LL not selected")
    assert of(knee) == ("skipped", "body part KNEE not selected")
    assert of(ours) == ("skipped", "produced by cxr-triage")
    assert of(mr) == ("skipped", "modality MR not selected")
    assert of(no_view) == ("queued", None)
    assert of(dicom_samples_dir / "nih_dx_chest_implicit_vr.dcm") == ("queued", None)
    skipped = embedded_node.scalars(select(Job).where(Job.state == "skipped"))
    assert all(job.skipped_at is not None and job.queued_at is None for job in skipped)


def test_resent_instance_is_idempotent_and_changed_bytes_make_a_new_version(
    embedded_node: Node, tmp_path: Path
) -> None:
    original = chest_dx()
    first = write_unchecked(original, tmp_path / "first.dcm")
    original.InstitutionName = "Corrected after QC"
    changed = write_unchecked(original, tmp_path / "changed.dcm")
    with embedded_node.gateway():
        port = embedded_node.dicom_port
        for path in (first, first, changed, changed, first):
            assert send_files([path], "127.0.0.1", port, "CXR_TRIAGE")[0].status == SUCCESS
        wait_until(
            lambda: len(embedded_node.scalars(select(Job).where(Job.state == "queued"))) == 2,
            20,
            "two jobs queued",
        )
    versions = embedded_node.query(
        select(Instance.version, Instance.path)
        .where(Instance.sop_instance_uid == original.SOPInstanceUID)
        .order_by(Instance.version)
    )
    assert [v for v, _ in versions] == [1, 2]
    assert dataset_bytes(embedded_node.spool / versions[0][1]) == dataset_bytes(first)
    assert dataset_bytes(embedded_node.spool / versions[1][1]) == dataset_bytes(changed)
    assert versions[1][1].endswith(f"{original.SOPInstanceUID}.v2.dcm")
    assert dcmread(embedded_node.spool / versions[1][1]).InstitutionName == "Corrected after QC"
    assert len(embedded_node.scalars(select(Job))) == 2
    assert len(embedded_node.scalars(select(Study))) == 1


def _bad_inputs(tmp_path: Path, good: Path) -> dict[str, tuple[Path, int, str]]:
    """Files a broken sender might send, with the status and comment each must get."""
    data = good.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 1000])
    header_cut = tmp_path / "header_cut.dcm"
    header_cut.write_bytes(data[:400])
    mismatch_ds = chest_dx()
    mismatch_ds.SOPClassUID = CR_IMAGE_STORAGE  # meta (and so the context) still says DX
    traversal_ds = chest_dx()
    traversal_ds.StudyInstanceUID = "1.2.3/../../../../tmp/evil"
    traversal_sop = chest_dx()
    traversal_sop.SOPInstanceUID = UID("../../x")
    traversal_sop.file_meta.MediaStorageSOPInstanceUID = UID("../../x")
    empty = chest_dx()
    for keyword in [k for k in empty.dir() if k]:
        delattr(empty, keyword)
    return {
        "truncated pixel data": (truncated, CANNOT_UNDERSTAND, "data set truncated"),
        "truncated header": (header_cut, CANNOT_UNDERSTAND, "data set truncated"),
        "pixel data missing": (
            write_unchecked(chest_dx(PixelData=None), tmp_path / "no_pixels.dcm"),
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "Pixel Data missing",
        ),
        "pixel data short": (
            write_unchecked(chest_dx(PixelData=b"\0" * 100), tmp_path / "short.dcm"),
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "Pixel Data shorter than its image attributes",
        ),
        "SOP class mismatch": (
            write_unchecked(mismatch_ds, tmp_path / "mismatch.dcm"),
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "SOPClassUID differs from the request",
        ),
        "study UID with ../": (
            write_unchecked(traversal_ds, tmp_path / "traversal.dcm"),
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "StudyInstanceUID is not a valid UID",
        ),
        "SOP instance UID with ../": (
            write_unchecked(traversal_sop, tmp_path / "traversal_sop.dcm"),
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "SOPInstanceUID is not a valid UID",
        ),
        "empty data set": (
            write_unchecked(empty, tmp_path / "empty.dcm"),
            CANNOT_UNDERSTAND,
            "empty data set",
        ),
    }


def test_bad_input_gets_its_status_and_loses_nothing(
    embedded_node: Node, labelled_dicom_dir: Path, tmp_path: Path
) -> None:
    good = sorted(labelled_dicom_dir.glob("*_D_*.dcm"))
    bad = _bad_inputs(tmp_path, good[0])
    with embedded_node.gateway() as gateway:
        port = embedded_node.dicom_port
        assert storescu(port, *good[:2]).returncode == 0
        before = {uid: sha256(path) for uid, path in spooled(embedded_node).items()}
        with association(port) as assoc:
            for name, (path, expected_status, expected_comment) in bad.items():
                status, comment = send_raw(assoc, path)
                assert (status, comment) == (expected_status, expected_comment), name
            # The same association still takes good data after every refusal.
            assert send_raw(assoc, good[2])[0] == SUCCESS
        assert gateway.alive()
        assert echo(port) == SUCCESS
        assert storescu(port, good[3]).returncode == 0

    after = spooled(embedded_node)
    assert {uid: sha256(after[uid]) for uid in before} == before
    assert len(after) == 4
    assert not partial_files(embedded_node.spool)
    assert not (tmp_path.parent / "tmp").exists() and not Path("/tmp/evil").exists()
    stored_files = [p for p in embedded_node.spool.glob("[0-9]*/*/*") if p.is_file()]
    assert len(stored_files) == 4 and all(p.suffix == ".dcm" for p in stored_files)
    assert {p.name for p in embedded_node.spool.iterdir() if not p.name[0].isdigit()} <= {
        ".incoming",
        ".locks",
    }
    audits = embedded_node.scalars(select(Association).order_by(Association.id))
    refusing = [a for a in audits if a.instances_refused]
    assert [(a.instances_received, a.instances_refused) for a in refusing] == [(1, len(bad))]


def test_unknown_calling_ae_is_rejected_with_the_allow_list_on(embedded_node: Node) -> None:
    embedded_node.extra_env["CXR_ALLOWED_CALLING_AETS"] = "MODALITY1, PACS"
    with embedded_node.gateway(ready_aet="PACS"):
        assert echo(embedded_node.dicom_port, calling_ae_title="INTRUDER") is None
        assert echo(embedded_node.dicom_port, calling_ae_title="PACS") == SUCCESS
    rows = embedded_node.query(
        select(Association.calling_ae_title, Association.outcome, Association.detail)
    )
    assert ("INTRUDER", "rejected", "calling AE title not recognised") in rows
    assert ("PACS", "released", None) in rows


def test_association_aborted_mid_transfer_leaves_no_partial_file(
    embedded_node: Node, labelled_dicom_dir: Path, tmp_path: Path
) -> None:
    """A sender killed in the middle of a large object: nothing half-written, listener serves."""
    large = write_unchecked(chest_dx(rows=4096, columns=4096), tmp_path / "large.dcm")  # 16 MiB
    with embedded_node.gateway() as gateway:
        port = embedded_node.dicom_port
        assert storescu(port, labelled_dicom_dir / "003_D_CR_normal.dcm").returncode == 0
        before = {uid: sha256(path) for uid, path in spooled(embedded_node).items()}
        sender = subprocess.Popen(
            [
                "storescu",
                "--max-send-pdu",
                "4096",
                "-aet",
                "KILLED",
                "127.0.0.1",
                str(port),
                str(large),
            ],
            env={**os.environ, **DCMTK_ENV},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: sender.poll() is not None or bool(partial_files(embedded_node.spool)),
            30,
            "the transfer to start",
        )
        sender.kill()
        sender.wait()
        wait_until(lambda: not partial_files(embedded_node.spool), 10, "the partial file to go")
        wait_until(
            lambda: (
                embedded_node.scalars(
                    select(Association.outcome).where(Association.calling_ae_title == "KILLED")
                )
                == ["aborted"]
            ),
            10,
            "the aborted association's audit row",
        )
        assert gateway.alive() and echo(port) == SUCCESS
        assert storescu(port, labelled_dicom_dir / "007_D_CR_normal.dcm").returncode == 0
    after = spooled(embedded_node)
    assert {uid: sha256(after[uid]) for uid in before} == before
    assert len(after) == len(before) + 1  # the killed transfer left nothing behind


def test_association_limit_rejects_the_extra_association(embedded_node: Node) -> None:
    embedded_node.extra_env["CXR_MAX_ASSOCIATIONS"] = "1"
    with embedded_node.gateway():
        # The readiness check's association may still be closing: take the one slot when free.
        ae = AE(ae_title="FIRST")
        ae.add_requested_context(VERIFICATION_SOP_CLASS)
        holder = ae.associate("127.0.0.1", embedded_node.dicom_port, ae_title="CXR_TRIAGE")
        while not holder.is_established:
            time.sleep(0.1)
            holder = ae.associate("127.0.0.1", embedded_node.dicom_port, ae_title="CXR_TRIAGE")
        try:
            assert echo(embedded_node.dicom_port, calling_ae_title="SECOND") is None
        finally:
            holder.release()
    rows = embedded_node.query(
        select(Association.calling_ae_title, Association.outcome, Association.detail)
    )
    assert ("SECOND", "rejected", "local limit exceeded") in rows


@pytest.fixture
def small_spool(embedded_node: Node) -> Iterator[Path]:
    """A 48 MiB tmpfs as the node's spool, so the disk reserve can really be crossed."""
    embedded_node.spool.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(embedded_node.spool)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the spool: {mounted.stderr.strip()}")
    yield embedded_node.spool
    subprocess.run(["umount", "-l", str(embedded_node.spool)], check=False)


def test_disk_reserve_refuses_objects_then_associations(
    embedded_node: Node, small_spool: Path, tmp_path: Path
) -> None:
    embedded_node.extra_env["CXR_DISK_RESERVE_MB"] = "24"
    images = [
        write_unchecked(chest_dx(rows=2048, columns=2048), tmp_path / f"image{i}.dcm")
        for i in range(8)
    ]  # 4 MiB each: the reserve is crossed after about six
    with embedded_node.gateway() as gateway:
        port = embedded_node.dicom_port
        with association(port) as assoc:
            statuses = [send_raw(assoc, image) for image in images]
        stored = [s for s, _ in statuses if s == SUCCESS]
        refused = [(s, c) for s, c in statuses if s != SUCCESS]
        assert 4 <= len(stored) < len(images)
        assert set(refused) == {(OUT_OF_RESOURCES, "free disk space below the configured reserve")}
        # Statuses turn to refusals once and stay so: nothing after the first refusal is stored.
        assert [s for s, _ in statuses] == [SUCCESS] * len(stored) + [OUT_OF_RESOURCES] * len(
            refused
        )
        # Something else fills the disk below the reserve: new associations are refused.
        filler = small_spool / "filler"
        filler.write_bytes(b"\0" * (8 << 20))
        assert echo(port, calling_ae_title="LATECOMER") is None
        assert gateway.alive()
        # Room again: associations are accepted again.
        filler.unlink()
        assert echo(port, calling_ae_title="AFTER") == SUCCESS
    rows = embedded_node.query(
        select(Association.calling_ae_title, Association.outcome, Association.detail)
    )
    assert ("LATECOMER", "rejected", "free disk space below the reserve") in rows
    kept = spooled(embedded_node)
    assert len(kept) == len(stored)
    assert not partial_files(small_spool)


def test_several_gateway_processes_share_the_port(
    tmp_path: Path, postgres_url: str, labelled_dicom_dir: Path
) -> None:
    """Two receiving processes (SO_REUSEPORT) on PostgreSQL: concurrent senders are spread over
    both, every object is stored once, and one SOP Instance UID sent by many senders at once gets
    one row."""
    node = Node(
        home=tmp_path / "home",
        database_url=postgres_url,
        extra_env={"CXR_GATEWAY_PROCESSES": "2"},
    )
    node.migrate()
    files = sorted(labelled_dicom_dir.glob("*_D_*.dcm"))  # uncompressed: one association each
    same = files[0]
    with node.gateway():
        senders = [
            subprocess.Popen(
                [
                    "storescu",
                    "-xe",
                    "-aet",
                    f"SENDER{i}",
                    "127.0.0.1",
                    str(node.dicom_port),
                    str(path),
                    str(same),
                ],
                env={**os.environ, **DCMTK_ENV},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i, path in enumerate(files * 2)
        ]
        assert [sender.wait(timeout=120) for sender in senders] == [0] * len(senders)
    rows = node.query(select(Instance.sop_instance_uid, Instance.version))
    assert sorted(rows) == sorted(
        (dcmread(f, stop_before_pixels=True).SOPInstanceUID, 1) for f in files
    )
    pids = {
        pid
        for (pid,) in node.query(
            select(Association.gateway_pid).where(Association.calling_ae_title.like("SENDER%"))
        )
    }
    assert len(pids) == 2
    node.close()


def test_a_gateway_starting_removes_only_dead_processes_transfers(tmp_path: Path) -> None:
    """A gateway process starting (a restart, or CXR_GATEWAY_PROCESSES > 1) cleans up what dead
    processes left half-received, never what a running one is receiving."""
    incoming = tmp_path / ".incoming"
    alive = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    for pid in (alive.pid, dead.pid, os.getpid()):
        (incoming / str(pid)).mkdir(parents=True)
        (incoming / str(pid) / "tmp1234.dcm").write_bytes(b"half a data set")
    try:
        assert remove_dead_transfers(incoming) == 1
        assert sorted(p.name for p in incoming.iterdir()) == sorted(
            [str(alive.pid), str(os.getpid())]
        )
    finally:
        alive.kill()
