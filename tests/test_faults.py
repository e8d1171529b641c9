"""Faults on real servers: the broker stopped during ingest, a worker killed mid-task."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from db.models import Job
from tests.node import Node, storescu
from tests.servers import RedisServer, wait_until


def queued_job_ids(redis_url: str, queue: str = "inference") -> list[int]:
    """Job ids in the Celery messages (micro-batches) waiting in a Redis queue."""
    client = redis.Redis.from_url(redis_url)
    ids: list[int] = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.extend(int(job_id) for job_id in args[0])
    return ids


@pytest.fixture
def redis_node(tmp_path: Path, own_redis: RedisServer, postgres_url: str) -> Node:
    node = Node(home=tmp_path / "home", database_url=postgres_url, broker_url=own_redis.url)
    node.migrate()
    return node


def test_broker_down_during_ingest_queues_every_instance_exactly_once(
    redis_node: Node, own_redis: RedisServer, labelled_dicom_dir: Path
) -> None:
    files = sorted(labelled_dicom_dir.glob("*.dcm"))
    with redis_node.gateway() as gateway:
        own_redis.stop()
        sent = storescu(redis_node.dicom_port, *files)
        assert sent.returncode == 0, sent.stderr  # C-STORE success does not depend on the broker
        jobs = redis_node.wait_for_jobs(len(files), {"received"}, timeout=30)
        assert all(job.queued_at is None for job in jobs)

        own_redis.start()
        redis_node.wait_for_jobs(len(files), {"queued"}, timeout=60)
        assert "broker available again" in gateway.log()
        queued_at = [job.queued_at for job in redis_node.scalars(select(Job).order_by(Job.id))]
        time.sleep(2)  # four more sweeps publish nothing again
        assert [j.queued_at for j in redis_node.scalars(select(Job).order_by(Job.id))] == queued_at

    ids = queued_job_ids(own_redis.url)
    assert sorted(ids) == sorted(job.id for job in jobs)


def test_killed_worker_task_runs_again_and_completes(
    redis_node: Node, dicom_samples_dir: Path, labelled_dicom_dir: Path
) -> None:
    """SIGKILL the worker process in the middle of a task: acks_late redelivers it."""
    redis_node.extra_env["CXR_WORKER_CONCURRENCY"] = "1"
    slow = [dicom_samples_dir / "RG1_J2KR.dcm", dicom_samples_dir / "RG1_J2KI.dcm"]
    slow += sorted(labelled_dicom_dir.glob("*_B_*.dcm"))  # JPEG 2000, the slowest to decode
    with redis_node.gateway(), redis_node.worker():
        assert storescu(redis_node.dicom_port, *slow).returncode == 0
        killed: int | None = None

        def kill_one_in_progress() -> bool:
            nonlocal killed
            for job in redis_node.scalars(select(Job).where(Job.state == "processing")):
                pid = int(str(job.worker).rsplit(":", 1)[1])
                os.kill(pid, signal.SIGKILL)
                killed = job.id
                return True
            return False

        wait_until(kill_one_in_progress, 60, "a task in progress", interval=0.005)
        jobs = redis_node.wait_for_jobs(len(slow), {"done", "failed"}, timeout=120)

    assert [job.state for job in jobs] == ["done"] * len(slow)
    assert killed is not None
    # The killed task (a micro-batch holding the killed job) ran a second time.
    by_id = {job.id: job for job in jobs}
    assert by_id[killed].attempts == 2
    assert {job.attempts for job in jobs} <= {1, 2}
