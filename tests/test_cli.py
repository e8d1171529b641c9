"""The command line as an operator uses it: `cxr-triage run` on the embedded default, and `send`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from db.models import Job
from tests.node import Node, echo
from tests.servers import REPO_ROOT, wait_until


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_send_prints_a_status_per_file_and_a_summary(
    embedded_node: Node, labelled_dicom_dir: Path
) -> None:
    with embedded_node.gateway():
        result = cli("send", str(labelled_dicom_dir), "--port", str(embedded_node.dicom_port))
    # labels.csv is not DICOM: reported, not sent, and the exit status says so.
    assert result.returncode == 1
    assert "0x0000: 24" in result.stdout
    assert "not sent: 1" in result.stdout
    assert "24 of 25 stored" in result.stdout
    assert "FAILED" in result.stderr and "labels.csv" in result.stderr
    assert len(embedded_node.scalars(select(Job))) == 24


def test_send_to_a_closed_port_fails_every_file(labelled_dicom_dir: Path) -> None:
    from tests.servers import free_port

    result = cli(
        "send", str(labelled_dicom_dir / "000_A_DX_normal.dcm"), "--port", str(free_port())
    )
    assert result.returncode == 1
    assert "0 of 1 stored" in result.stdout


def test_run_starts_the_whole_node_on_the_embedded_default(
    tmp_path: Path, labelled_dicom_dir: Path
) -> None:
    node = Node(
        home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'home' / 'cxr-triage.db'}"
    )
    env = {key: value for key, value in node.env().items() if key != "CXR_DATABASE_URL"}
    process = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "run"],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: echo(node.dicom_port) == 0, 60, "the node's gateway")
        sent = cli(
            "send",
            *map(str, sorted(labelled_dicom_dir.glob("00*.dcm"))),
            "--port",
            str(node.dicom_port),
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        jobs = node.wait_for_jobs(10, {"done"}, timeout=120)
        assert all(job.outcome and job.outcome["shape"][2] == 1 for job in jobs)
        assert (tmp_path / "home" / "broker.db").is_file()  # the embedded broker
    finally:
        os.kill(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output.decode()[-3000:]
    node.close()
