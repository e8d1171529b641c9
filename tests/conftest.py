"""Fixtures shared by every suite: where the real data lives."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.node import Node
from tests.servers import PostgresServer, RedisServer, create_database, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository, or ``CXR_SHARED_DATA``."""
    return Path(os.environ.get("CXR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def chest_xray_dir() -> Path:
    """The Kermany dataset in the Kaggle layout; skips the test when it is absent."""
    path = Path(os.environ.get("CXR_DATASET_DIR", shared_data_dir() / "chest_xray"))
    if not (path / "train").is_dir():
        pytest.skip(f"Kermany dataset not found at {path} (set CXR_DATASET_DIR)")
    return path


@pytest.fixture(scope="session")
def dicom_samples_dir() -> Path:
    """Real chest radiograph DICOMs; skips the test when they are absent."""
    path = Path(os.environ.get("CXR_DICOM_SAMPLES", shared_data_dir() / "dicom"))
    if not any(path.glob("*.dcm")):
        pytest.skip(f"chest radiograph DICOMs not found at {path} (set CXR_DICOM_SAMPLES)")
    return path


@pytest.fixture(scope="session")
def labelled_dicom_dir() -> Path:
    """The 24 labelled full-resolution DICOMs; skips the test when they are absent."""
    path = shared_data_dir() / "dicom_labelled"
    if not (path / "labels.csv").is_file():
        pytest.skip(f"labelled DICOMs not found at {path}")
    return path


# --- Servers --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server for the session: ``CXR_TEST_REDIS_URL``, or one started on a free port."""
    if url := os.environ.get("CXR_TEST_REDIS_URL"):
        yield url
        return
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server this test may stop and start."""
    server = RedisServer(free_port(), tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    yield server
    if server.process is not None:
        server.stop()


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server: ``CXR_TEST_POSTGRES_URL``, or a cluster initialised on a free port."""
    if url := os.environ.get("CXR_TEST_POSTGRES_URL"):
        yield url
        return
    # Not under pytest's temporary directory: that is private to root, and the server runs as
    # the postgres user when the tests run as root.
    directory = Path(tempfile.mkdtemp(prefix="cxr-test-postgres-"))
    server = PostgresServer(directory)
    server.start()
    yield server.admin_url
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> str:
    """A fresh, empty database for one test."""
    return create_database(postgres_admin_url)


# --- Nodes ----------------------------------------------------------------------------------------


@pytest.fixture
def embedded_node(tmp_path: Path) -> Iterator[Node]:
    """A node on the embedded default: SQLite and the SQLite broker under its home."""
    home = tmp_path / "home"
    node = Node(home=home, database_url=f"sqlite:///{home / 'cxr-triage.db'}")
    node.migrate()
    yield node
    node.close()


@pytest.fixture(params=["embedded", "redis-postgresql"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    """The same node on the embedded default and on Redis + PostgreSQL."""
    home = tmp_path / "home"
    if request.param == "embedded":
        node = Node(home=home, database_url=f"sqlite:///{home / 'cxr-triage.db'}")
    else:
        broker_url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(broker_url).flushdb()  # no message of an earlier test
        node = Node(
            home=home,
            database_url=request.getfixturevalue("postgres_url"),
            broker_url=broker_url,
        )
    node.migrate()
    yield node
    node.close()
