"""The whole loop: modality -> gateway -> inference -> SR -> PACS, on Redis and PostgreSQL.

DCMTK ``storescu`` sends one-image studies at a steady rate, one association per study (as a CR or
DX modality does), to a cxr-triage node (gateway + worker, the committed model) whose destination
is Orthanc. For each study it measures the time from the release of the sending association
(storescu has exited) to the SR stored in Orthanc (the moment Orthanc acknowledged our C-STORE,
as the delivery row records it). It prints p50 and p95 at each rate, and whether the node kept up:
a rate is sustained when every SR arrives within ``--drain`` seconds of the last study sent and
latency does not grow over the run.

The studies are copies of a real 1024x1024 chest radiograph (NIH ChestX-ray14, implicit VR) with
new UIDs.

    python bench/bench_loop.py [--rates 10,20,30,40,50] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pydicom import dcmread  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from sqlalchemy import select  # noqa: E402

from db.models import Delivery, Instance, Report, StudyResult  # noqa: E402
from tests.node import DCMTK_ENV, Node  # noqa: E402
from tests.servers import (  # noqa: E402
    OrthancServer,
    PostgresServer,
    RedisServer,
    create_database,
    free_port,
)

SOURCE = REPO_ROOT.parent / "shared" / "data" / "dicom" / "nih_dx_chest_implicit_vr.dcm"


@dataclass
class RunResult:
    rate: float
    sent: int
    delivered: int
    latencies: list[float]

    @property
    def sustained(self) -> bool:
        if self.delivered < self.sent or len(self.latencies) < 6:
            return False
        third = len(self.latencies) // 3
        early = statistics.median(self.latencies[:third])
        late = statistics.median(self.latencies[-third:])
        return late < max(2 * early, early + 0.5)


def make_studies(directory: Path, count: int) -> list[Path]:
    source = dcmread(SOURCE)
    paths = []
    for index in range(count):
        source.StudyInstanceUID = generate_uid()
        source.SeriesInstanceUID = generate_uid()
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        source.PatientID = f"BENCH{index:05d}"
        source.BodyPartExamined = "CHEST"
        path = directory / f"{index:05d}.dcm"
        source.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send_at_rate(port: int, files: list[Path], rate: float) -> dict[str, float]:
    """One storescu per study, started on a fixed schedule; returns release time by SOP UID."""
    released: dict[str, float] = {}
    threads = []
    start = time.time()

    def send(path: Path) -> None:
        result = subprocess.run(
            [
                "storescu",
                "-xi",
                "-aet",
                "MODALITY",
                "-aec",
                "CXR_TRIAGE",
                "127.0.0.1",
                str(port),
                str(path),
            ],
            env={**os.environ, **DCMTK_ENV},
            capture_output=True,
        )
        if result.returncode == 0:
            released[dcmread(path, stop_before_pixels=True).SOPInstanceUID] = time.time()

    for index, path in enumerate(files):
        delay = start + index / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=send, args=(path,))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return released


def delivered_at(node: Node) -> dict[str, float]:
    """SR stored in the PACS, by source SOP Instance UID: when Orthanc acknowledged it."""
    rows = node.query(
        select(Instance.sop_instance_uid, Delivery.finished_at)
        .join(StudyResult, StudyResult.study_id == Instance.study_id)
        .join(Report, Report.study_result_id == StudyResult.id)
        .join(Delivery, Delivery.report_id == Report.id)
        .where(Delivery.outcome == "sent")
    )
    return {
        uid: finished.replace(tzinfo=UTC).timestamp()
        if finished.tzinfo is None
        else finished.timestamp()
        for uid, finished in rows
    }


def run(node: Node, work: Path, rate: float, seconds: float, drain: float) -> RunResult:
    files = make_studies(Path(tempfile.mkdtemp(dir=work)), int(rate * seconds))
    released = send_at_rate(node.dicom_port, files, rate)
    deadline = time.time() + drain
    while time.time() < deadline and len(delivered_at(node).keys() & released.keys()) < len(
        released
    ):
        time.sleep(0.2)
    done = delivered_at(node)
    order = sorted(released, key=released.get)  # type: ignore[arg-type]
    latencies = [done[uid] - released[uid] for uid in order if uid in done]
    return RunResult(rate, len(files), sum(uid in done for uid in released), latencies)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="10,20,30,40,50", help="studies per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="sending time per rate")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait after")
    parser.add_argument("--concurrency", type=int, default=2, help="inference worker processes")
    parser.add_argument("--dicom-threads", type=int, default=8, help="dicom worker threads")
    parser.add_argument("--redis-url", help="an existing Redis (default: start one)")
    parser.add_argument(
        "--postgres-url", help="an existing PostgreSQL admin URL (default: start one)"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cxr-bench-loop-"))
    servers: list[RedisServer | PostgresServer | OrthancServer] = []
    try:
        redis_url = args.redis_url
        if redis_url is None:
            redis = RedisServer(free_port(), work / "redis")
            redis.directory.mkdir()
            redis.start()
            servers.append(redis)
            redis_url = redis.url
        admin_url = args.postgres_url
        if admin_url is None:
            postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="cxr-bench-postgres-")))
            postgres.start()
            servers.append(postgres)
            admin_url = postgres.admin_url
        node = Node(
            home=work / "home", database_url=create_database(admin_url), broker_url=redis_url
        )
        pacs = OrthancServer(work / "orthanc")
        pacs.start()
        servers.append(pacs)
        node.configure({"destinations": [pacs.destination("pacs")]})
        node.migrate()
        print(
            f"cxr-triage loop: Redis + PostgreSQL, {args.concurrency} inference processes, "
            f"{args.dicom_threads} dicom threads, "
            f"{os.cpu_count()} CPUs, {args.seconds:.0f} s per rate"
        )
        print(
            f"{'studies/s':>9} {'sent':>5} {'SRs':>5} {'p50 s':>7} {'p95 s':>7} {'max s':>7}"
            "  kept up"
        )
        with (
            node.gateway(),
            node.worker(
                "--queues",
                "inference",
                "--concurrency",
                str(args.concurrency),
                name="inference-worker",
            ),
            node.worker(
                "--queues",
                "dicom",
                "--pool",
                "threads",
                "--concurrency",
                str(args.dicom_threads),
                name="dicom-worker",
            ),
        ):
            # Warm up: every inference process loads the model and every dicom thread opens its
            # connections before anything is measured.
            run(node, work, 5, 4, args.drain)
            for rate in (float(r) for r in args.rates.split(",")):
                result = run(node, work, rate, args.seconds, args.drain)
                lat = result.latencies or [float("nan")]
                print(
                    f"{rate:9.0f} {result.sent:5d} {result.delivered:5d} "
                    f"{percentile(lat, 0.5):7.3f} {percentile(lat, 0.95):7.3f} {max(lat):7.3f}  "
                    f"{'yes' if result.sustained else 'no'}",
                    flush=True,
                )
        node.close()
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
