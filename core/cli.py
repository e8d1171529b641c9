"""The ``cxr-triage`` command line: one console script with a subcommand per role."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from core.logging import configure_logging
from core.settings import Settings
from training.cli import evaluate, export, train

LOGGER = logging.getLogger(__name__)

DICOM_THREADS = 8
"""Threads of the dicom-queue worker in `cxr-triage run`: building reports is light, and sending
them mostly waits on the PACS."""


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """cxr-triage: chest radiograph triage worker for hospital imaging networks."""
    settings = Settings()
    configure_logging(settings.log_level)
    ctx.obj = settings


@cli.group()
def db() -> None:
    """Database administration."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_obj
def db_upgrade(settings: Settings, revision: str) -> None:
    """Apply the Alembic migrations to CXR_DATABASE_URL (SQLite in CXR_HOME by default)."""
    from db.migrate import upgrade

    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url, revision)
    click.echo(f"database at revision {revision}")


@cli.command()
@click.pass_obj
def gateway(settings: Settings) -> None:
    """Run the DICOM Storage SCP (C-ECHO, C-STORE) until stopped."""
    from dicom_gateway.store_scp import serve

    serve(settings)


@cli.command()
@click.option("--concurrency", type=int, default=None, help="Worker processes (or threads).")
@click.option("--queues", default="inference,dicom", show_default=True)
@click.option(
    "--pool",
    type=click.Choice(["prefork", "threads"]),
    default="prefork",
    show_default=True,
    help="threads suits the dicom queue alone: its tasks mostly wait on PACS.",
)
@click.option("--beat", is_flag=True, help="Also run the periodic tasks (one node only).")
@click.pass_obj
def worker(settings: Settings, concurrency: int | None, queues: str, pool: str, beat: bool) -> None:
    """Run a Celery worker (same as `celery -A worker.celery_app worker`)."""
    from worker.celery_app import INFERENCE_QUEUE, create_celery
    from worker.model import ModelCard

    if INFERENCE_QUEUE in queues.split(","):
        try:
            ModelCard.read(settings.model_path)
        except (OSError, ValueError, KeyError) as exc:
            raise click.ClickException(
                f"no usable model at {settings.model_path} (and its model_card.json): {exc}"
            ) from exc
    app = create_celery(settings)
    argv = [
        "worker",
        f"--loglevel={settings.log_level}",
        f"--queues={queues}",
        f"--pool={pool}",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--hostname=cxr@%h-{queues.replace(',', '-')}",
    ]
    app.worker_main([*argv, "--beat"] if beat else argv)


@cli.command()
@click.pass_obj
def web(settings: Settings) -> None:
    """Serve the worklist, the queue dashboard, /healthz and /metrics on CXR_HTTP_PORT."""
    import uvicorn

    from web.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
    )


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=11112, show_default=True)
@click.option("--aet", "called_aet", default="CXR_TRIAGE", show_default=True, help="Called AE.")
@click.option("--calling-aet", default="CXR_SEND", show_default=True)
def send(paths: tuple[Path, ...], host: str, port: int, called_aet: str, calling_aet: str) -> None:
    """Send DICOM files and folders with C-STORE; prints a per-file status summary."""
    from collections import Counter

    from tqdm import tqdm

    from dicom_gateway.store_scu import SendResult, expand_paths, send_files

    files = expand_paths(paths)
    with tqdm(total=len(files), unit="file", desc=f"C-STORE to {called_aet}") as bar:

        def progress(result: SendResult) -> None:
            bar.update(1)
            if not result.ok:
                status = "none" if result.status is None else f"0x{result.status:04X}"
                bar.write(
                    f"FAILED {result.path}: status {status} {result.error or ''}".rstrip(),
                    sys.stderr,
                )

        results = send_files(files, host, port, called_aet, calling_aet, on_result=progress)
    summary = Counter("not sent" if r.status is None else f"0x{r.status:04X}" for r in results)
    for status, count in sorted(summary.items()):
        click.echo(f"{status}: {count}")
    failed = sum(not r.ok for r in results)
    click.echo(f"{len(results) - failed} of {len(results)} stored")
    if failed:
        sys.exit(1)


@cli.command()
@click.pass_obj
def run(settings: Settings) -> None:
    """Run the whole node on this machine: migrate, then gateway, worker (with the periodic
    tasks) and web, until stopped."""
    from db.migrate import upgrade

    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    roles = {
        "gateway": ["gateway"],
        "inference worker": ["worker", "--queues", "inference", "--beat"],
        "dicom worker": [
            "worker",
            "--queues",
            "dicom",
            "--pool",
            "threads",
            "--concurrency",
            str(DICOM_THREADS),
        ],
        "web": ["web"],
    }
    children = {
        role: subprocess.Popen([sys.executable, "-m", "core.cli", *argv])
        for role, argv in roles.items()
    }
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    LOGGER.info("node running: %s", ", ".join(f"{r} pid {p.pid}" for r, p in children.items()))
    exit_code = 0
    while not stopping:
        for role, child in children.items():
            if child.poll() is not None:
                LOGGER.error("%s exited with %s; stopping the node", role, child.returncode)
                exit_code, stopping = 1, True
        time.sleep(0.5)
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    for child in children.values():
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
    sys.exit(exit_code)


cli.add_command(train)
cli.add_command(evaluate)
cli.add_command(export)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
