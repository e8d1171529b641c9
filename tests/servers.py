"""Real servers for the tests, started from installed binaries on free ports and stopped after.

Redis and PostgreSQL come from the Debian packages (``redis-server``, ``postgresql``). When
``CXR_TEST_REDIS_URL`` or ``CXR_TEST_POSTGRES_URL`` is set, that server is used instead. The
cxr-triage roles run as their own processes (``python -m core.cli gateway`` and so on), as they do
in production.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _require_binary(name: str, package: str) -> str:
    path = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None
    )
    if path is None:
        pytest.skip(f"{name} not installed (Debian package {package})")
    return path


# --- Redis --------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = _require_binary("redis-server", "redis-server")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: port_open(self.port), 10, f"redis on {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
        wait_until(lambda: not port_open(self.port), 10, "redis to stop")


# --- PostgreSQL ---------------------------------------------------------------------------------


@dataclass
class PostgresServer:
    """A throwaway cluster; run as the ``postgres`` user when the tests run as root."""

    directory: Path
    port: int = field(default_factory=free_port)
    started: bool = False

    def _run(self, *args: str) -> None:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        initdb = _require_binary("initdb", "postgresql")
        pg_ctl = _require_binary("pg_ctl", "postgresql")
        data = self.directory / "data"
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        self._run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run(
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(self.directory / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=on",
            "start",
        )
        self.started = True

    def stop(self) -> None:
        if self.started:
            self._run(
                _require_binary("pg_ctl", "postgresql"),
                "-D",
                str(self.directory / "data"),
                "-m",
                "fast",
                "-w",
                "stop",
            )
            self.started = False

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


def create_database(admin_url: str) -> str:
    """A new empty database on the server of ``admin_url``; returns its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    name = f"cxr_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname=url.database, autocommit=True
    ) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


# --- cxr-triage roles ---------------------------------------------------------------------------


@dataclass
class NodeProcess:
    """One cxr-triage role (gateway, worker) running as a subprocess with its own environment."""

    role: str
    env: dict[str, str]
    log_path: Path
    options: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        environment = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "core.cli", self.role, *self.options],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@contextlib.contextmanager
def running(process: NodeProcess, ready: Callable[[], bool], what: str) -> Iterator[NodeProcess]:
    process.start()
    try:
        try:
            wait_until(lambda: ready() or not process.alive(), 60, what)
        except AssertionError:
            raise AssertionError(f"{what} not ready; log:\n{process.log()[-4000:]}") from None
        if not process.alive():
            raise AssertionError(f"{process.role} exited; log:\n{process.log()[-4000:]}")
        yield process
    finally:
        process.stop()


# --- Orthanc, the PACS ---------------------------------------------------------------------------


@dataclass
class OrthancServer:
    """Orthanc from the Debian package, configured in ``directory`` on free ports.

    ``modalities`` are the DICOM peers it may send to: name -> (AE title, host, port).
    ``lua`` is an optional Lua script (for example a ``ReceivedInstanceFilter`` that rejects).
    """

    directory: Path
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    ae_title: str = "ORTHANC"
    lua: str | None = None
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def destination(self, name: str, outputs: list[str] | None = None) -> dict[str, Any]:
        """This server as a destination in a node's ``CXR_CONFIG`` (the config's default outputs
        unless ``outputs`` is given)."""
        entry: dict[str, Any] = {
            "name": name,
            "ae_title": self.ae_title,
            "host": "127.0.0.1",
            "port": self.dicom_port,
        }
        return entry if outputs is None else {**entry, "outputs": outputs}

    def start(self) -> None:
        binary = _require_binary("Orthanc", "orthanc")
        self.directory.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "Name": "cxr-test-pacs",
            "StorageDirectory": str(self.directory / "storage"),
            "IndexDirectory": str(self.directory / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {name: list(peer) for name, peer in self.modalities.items()},
            "Plugins": [],
            "LuaScripts": [],
        }
        if self.lua is not None:
            script = self.directory / "filter.lua"
            script.write_text(self.lua)
            config["LuaScripts"] = [str(script)]
        (self.directory / "orthanc.json").write_text(json.dumps(config))
        log = (self.directory / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            [binary, str(self.directory / "orthanc.json")],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self._alive(), 30, f"Orthanc on {self.http_port}")

    def _alive(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None
        wait_until(lambda: not port_open(self.dicom_port), 10, "Orthanc to stop")

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=body,
            method=method,
            headers={
                "Content-Type": "application/json"
                if body and body[:1] in b"[{"
                else "application/dicom"
            },
        )
        with urllib.request.urlopen(req, timeout=120) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, path: Path) -> str:
        """Store a file through the REST API; returns Orthanc's instance id."""
        return str(self.request("POST", "/instances", path.read_bytes())["ID"])

    def send_to(self, modality: str, resources: list[str]) -> Any:
        """C-STORE resources to a configured modality (``/modalities/<name>/store``)."""
        return self.request("POST", f"/modalities/{modality}/store", json.dumps(resources).encode())

    def study_instances(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Every instance of a study, with its main DICOM tags (SOPClassUID, Modality, ...)."""
        found = self.request(
            "POST",
            "/tools/find",
            json.dumps(
                {
                    "Level": "Instance",
                    "Query": {"StudyInstanceUID": study_instance_uid},
                    "Expand": True,
                }
            ).encode(),
        )
        return list(found)

    def instance_file(self, orthanc_id: str) -> bytes:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/instances/{orthanc_id}/file"
        )
        with urllib.request.urlopen(req, timeout=60) as response:
            return bytes(response.read())
