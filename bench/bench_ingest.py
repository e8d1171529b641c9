"""Ingest throughput: the cxr-triage gateway against DCMTK storescp and a bare pynetdicom listener.

DCMTK ``storescu`` (``TCP_NODELAY=1`` for every DCMTK process) sends 200 files of 1024x1024 8-bit
and 100 files of 2000x2000 16-bit DX to each receiver in turn, ``--senders`` associations at once
(each sender sends its share of the files), and the run is repeated ``--repeats`` times. It prints
instances/s and MB/s (medians over the repeats) and the ratio of each receiver to storescp measured
in the same run.

- ``cxr-triage``: the real gateway (`cxr-triage gateway`) on the embedded default or, with
  ``--redis-url`` and ``--postgres-url``, on Redis and PostgreSQL: header checks, fsync, rename into
  the spool, database row committed before each response, job published after the commit.
- ``storescp``: DCMTK's storescp writing each object to a directory (no fsync, no database).
- ``pynetdicom``: a bare pynetdicom listener that writes the received bytes to a file and answers.

    python bench/bench_ingest.py [--senders 4] [--repeats 3] [--gateway-processes 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import create_engine, text

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.node import echo  # noqa: E402
from tests.servers import create_database, free_port, port_open, wait_until  # noqa: E402

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")

BARE_PYNETDICOM = """
import os, sys
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

out = sys.argv[2]

def handle_store(event):
    name = os.path.join(out, event.request.AffectedSOPInstanceUID + ".dcm")
    with open(name, "wb") as fp:
        fp.write(event.encoded_dataset())
    return 0x0000

ae = AE("BARE")
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
ae.add_supported_context(Verification)
ae.maximum_pdu_size = 131072
ae.maximum_associations = 64
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, handle_store)])
"""


@dataclass(frozen=True)
class FileSet:
    name: str
    directory: Path
    count: int
    megabytes: float


def make_dx(path: Path, side: int, bits: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PatientID = f"BENCH{seed:04d}"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = 8 if bits == 8 else 12
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    dtype = np.uint8 if bits == 8 else np.uint16
    ds.PixelData = rng.integers(0, 2**ds.BitsStored, (side, side), dtype=dtype).tobytes()
    ds.save_as(path, enforce_file_format=True)


def file_sets(cache: Path) -> list[FileSet]:
    """The two sets, generated once into ``cache``."""
    sets = []
    for name, count, side, bits in (
        ("1024x1024 8-bit", 200, 1024, 8),
        ("2000x2000 16-bit", 100, 2000, 16),
    ):
        directory = cache / f"{side}_{bits}"
        if len(list(directory.glob("*.dcm"))) != count:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            for index in range(count):
                make_dx(directory / f"{index:04d}.dcm", side, bits, seed=index)
        size = sum(p.stat().st_size for p in directory.glob("*.dcm")) / 1e6
        sets.append(FileSet(name, directory, count, size))
    return sets


def send(port: int, files: list[Path], senders: int) -> float:
    """storescu from ``senders`` processes at once; returns the wall time until all finished."""
    shares = [files[index::senders] for index in range(senders)]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [
                "storescu",
                "-aet",
                f"BENCH{index}",
                "-aec",
                "CXR_TRIAGE",
                "127.0.0.1",
                str(port),
                *map(str, share),
            ],
            env=DCMTK_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for index, share in enumerate(shares)
        if share
    ]
    outputs = [process.communicate()[0] for process in processes]
    elapsed = time.perf_counter() - started
    for process, output in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"storescu exited with {process.returncode}: {output[-500:]!r}")
    return elapsed


Receiver = Callable[[Path, int], AbstractContextManager[Callable[[], int]]]
"""Starts a receiver on a port, writing under a work directory; yields a count of stored objects."""


@contextmanager
def storescp(work: Path, port: int) -> Iterator[Callable[[], int]]:
    out = work / "storescp"
    out.mkdir()
    process = subprocess.Popen(
        ["storescp", "-od", str(out), str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_open(port), 10, "storescp")
        yield lambda: len(list(out.iterdir()))
    finally:
        process.terminate()
        process.wait()


@contextmanager
def bare_pynetdicom(work: Path, port: int) -> Iterator[Callable[[], int]]:
    out = work / "bare"
    out.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", BARE_PYNETDICOM, str(port), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: echo(port, called="BARE") == 0, 30, "bare pynetdicom listener")
        yield lambda: len(list(out.iterdir()))
    finally:
        process.terminate()
        process.wait()


def gateway_factory(args: argparse.Namespace) -> Receiver:
    @contextmanager
    def gateway(work: Path, port: int) -> Iterator[Callable[[], int]]:
        home = work / "cxr-home"
        env = {
            **os.environ,
            "CXR_HOME": str(home),
            "CXR_DICOM_PORT": str(port),
            "CXR_DICOM_HOST": "127.0.0.1",
            "CXR_GATEWAY_PROCESSES": str(args.gateway_processes),
            "CXR_DISK_RESERVE_MB": "256",
            "CXR_LOG_LEVEL": "WARNING",
        }
        if args.postgres_url:
            env["CXR_DATABASE_URL"] = create_database(args.postgres_url)  # a fresh one per run
        if args.redis_url:
            env["CXR_BROKER_URL"] = args.redis_url
        cli = [sys.executable, "-m", "core.cli"]
        subprocess.run(
            [*cli, "db", "upgrade"], env=env, cwd=REPO_ROOT, check=True, capture_output=True
        )
        process = subprocess.Popen(
            [*cli, "gateway"],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        engine = create_engine(env.get("CXR_DATABASE_URL") or f"sqlite:///{home / 'cxr-triage.db'}")

        def stored() -> int:
            with engine.connect() as connection:
                return int(connection.execute(text("SELECT count(*) FROM instances")).scalar_one())

        try:
            wait_until(lambda: echo(port) == 0, 60, "cxr-triage gateway")
            yield stored
        finally:
            process.terminate()
            process.wait()
            engine.dispose()

    return gateway


def measure(receiver: Receiver, files: FileSet, senders: int) -> float:
    """Instances/s for one run, on a fresh receiver."""
    paths = sorted(files.directory.glob("*.dcm"))
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as work:
        port = free_port()
        with receiver(Path(work), port) as stored:
            elapsed = send(port, paths, senders)
            if stored() != len(paths):
                raise RuntimeError(f"{stored()} of {len(paths)} stored")
    return len(paths) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=4, help="concurrent storescu processes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gateway-processes", type=int, default=1)
    parser.add_argument("--redis-url", help="broker for the gateway (default: embedded)")
    parser.add_argument(
        "--postgres-url", help="a PostgreSQL server's admin URL (default: SQLite in the home)"
    )
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "cxr-bench-files"
    )
    args = parser.parse_args()

    receivers: dict[str, Receiver] = {
        "storescp": storescp,
        "pynetdicom": bare_pynetdicom,
        "cxr-triage": gateway_factory(args),
    }
    print(
        f"senders={args.senders} repeats={args.repeats} "
        f"gateway_processes={args.gateway_processes} "
        f"database={'PostgreSQL' if args.postgres_url else 'SQLite'} "
        f"broker={'Redis' if args.redis_url else 'embedded'}"
    )
    for files in file_sets(args.cache):
        rates: dict[str, list[float]] = {name: [] for name in receivers}
        for _ in range(args.repeats):
            for name, receiver in receivers.items():
                try:
                    rates[name].append(measure(receiver, files, args.senders))
                except RuntimeError as exc:
                    raise RuntimeError(f"{name}, {files.name}: {exc}") from exc
        reference = statistics.median(rates["storescp"])
        print(f"\n{files.name}: {files.count} files, {files.megabytes:.0f} MB")
        print(f"{'receiver':<12} {'inst/s':>8} {'MB/s':>8} {'ratio':>6}   runs (inst/s)")
        for name, values in rates.items():
            median = statistics.median(values)
            print(
                f"{name:<12} {median:8.1f} {median * files.megabytes / files.count:8.1f} "
                f"{median / reference:6.2f}   {', '.join(f'{v:.0f}' for v in values)}"
            )


if __name__ == "__main__":
    main()
