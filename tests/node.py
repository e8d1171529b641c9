"""A cxr-triage node under test: its settings as environment, its roles as processes, its database.

Tests drive it the way a hospital would: DICOM peers send to the gateway's port, and the test reads
the database (the source of truth) to check what happened.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from db.migrate import upgrade
from db.models import Job
from db.session import make_engine
from dicom_gateway.store_scp import VERIFICATION_SOP_CLASS
from tests.servers import NodeProcess, free_port, running, wait_until

DCMTK_ENV = {"TCP_NODELAY": "1"}
"""DCMTK tools stall about 40 ms per message on loopback without it."""


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def echo(port: int, calling_ae_title: str = "ECHOSCU", called: str = "CXR_TRIAGE") -> int | None:
    """C-ECHO with pynetdicom; returns the status, or None when no association."""
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


STORESCU_PROPOSAL = {
    "1.2.840.10008.1.2": ["-xi"],
    "1.2.840.10008.1.2.1": ["-xe"],
    "1.2.840.10008.1.2.2": ["-xb"],
    "1.2.840.10008.1.2.1.99": ["-xd"],
    "1.2.840.10008.1.2.4.50": ["-xy"],
    "1.2.840.10008.1.2.4.51": ["-xx"],
    "1.2.840.10008.1.2.4.57": ["-xs"],
    "1.2.840.10008.1.2.4.70": ["-xs"],
    "1.2.840.10008.1.2.4.80": ["-xt"],
    "1.2.840.10008.1.2.4.81": ["-xu"],
    "1.2.840.10008.1.2.4.90": ["-xv"],
    "1.2.840.10008.1.2.4.91": ["-xw"],
    "1.2.840.10008.1.2.5": ["-xr"],
}
"""storescu's option to propose each transfer syntax; without it storescu converts to (or fails
to convert to) an uncompressed one."""


def storescu(
    port: int,
    *paths: Path,
    calling: str = "STORESCU",
    called: str = "CXR_TRIAGE",
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """DCMTK ``storescu``: one association per transfer syntax, each proposing that syntax.

    Returns the last run, with the return code of the first that failed.
    """
    groups: dict[str, list[Path]] = {}
    for path in paths:
        syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(syntax, []).append(path)
    runs = [
        subprocess.run(
            [
                "storescu",
                "-R",
                "-nh",
                *STORESCU_PROPOSAL[syntax],
                "-aet",
                calling,
                "-aec",
                called,
                *extra,
                "127.0.0.1",
                str(port),
                *map(str, files),
            ],
            env={**os.environ, **DCMTK_ENV},
            capture_output=True,
            text=True,
            timeout=300,
        )
        for syntax, files in groups.items()
    ]
    failed = [run for run in runs if run.returncode != 0 or "E: " in run.stderr]
    return failed[0] if failed else runs[-1]


@dataclass
class Node:
    """Settings (as ``CXR_`` environment) for a node, and handles to run and inspect it."""

    home: Path
    database_url: str
    broker_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    _engine: Engine | None = None

    def env(self) -> dict[str, str]:
        env = {
            "CXR_HOME": str(self.home),
            "CXR_DATABASE_URL": self.database_url,
            "CXR_DICOM_PORT": str(self.dicom_port),
            "CXR_DICOM_HOST": "127.0.0.1",
            "CXR_HTTP_PORT": str(self.http_port),
            "CXR_DISK_RESERVE_MB": "64",
            "CXR_SWEEP_INTERVAL": "0.5",
            "CXR_LOG_LEVEL": "INFO",
            **self.extra_env,
        }
        if self.broker_url:
            env["CXR_BROKER_URL"] = self.broker_url
        return env

    @property
    def spool(self) -> Path:
        return self.home / "spool"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.database_url)
        return self._engine

    def configure(self, config: dict[str, Any]) -> None:
        """Write the node's YAML configuration file (``CXR_CONFIG``)."""
        self.home.mkdir(parents=True, exist_ok=True)
        path = self.home / "cxr-triage.yaml"
        path.write_text(yaml.safe_dump(config))
        self.extra_env["CXR_CONFIG"] = str(path)

    def migrate(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        upgrade(self.database_url)

    def process(self, role: str) -> NodeProcess:
        return NodeProcess(role, self.env(), self.home / f"{role}.log")

    @contextlib.contextmanager
    def gateway(self, ready_aet: str = "READY") -> Iterator[NodeProcess]:
        with running(
            self.process("gateway"),
            lambda: echo(self.dicom_port, calling_ae_title=ready_aet) == 0,
            "gateway C-ECHO",
        ) as process:
            yield process

    @contextlib.contextmanager
    def worker(self, *options: str, name: str = "worker") -> Iterator[NodeProcess]:
        """A worker with the given ``cxr-triage worker`` options; its log is ``<name>.log``."""
        process = NodeProcess("worker", self.env(), self.home / f"{name}.log", list(options))
        with running(process, lambda: " ready." in process.log(), f"{name} ready") as started:
            yield started

    @contextlib.contextmanager
    def web(self) -> Iterator[str]:
        """The web process; yields its base URL."""
        url = f"http://127.0.0.1:{self.http_port}"
        with running(self.process("web"), lambda: http_ok(f"{url}/healthz"), "web /healthz"):
            yield url

    def query(self, statement: Any) -> list[Any]:
        with Session(self.engine) as session:
            return list(session.execute(statement))

    def scalars(self, statement: Any) -> list[Any]:
        with Session(self.engine) as session:
            return list(session.scalars(statement))

    def sql(self, query: str) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(text(query)))

    def wait_for_jobs(self, count: int, states: set[str], timeout: float = 120) -> list[Job]:
        """Wait until ``count`` jobs exist and all are in ``states``; returns them."""

        def settled() -> bool:
            jobs = self.scalars(select(Job))
            return len(jobs) >= count and all(job.state in states for job in jobs)

        wait_until(settled, timeout, f"{count} jobs in {sorted(states)}", interval=0.2)
        return self.scalars(select(Job).order_by(Job.id))

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
