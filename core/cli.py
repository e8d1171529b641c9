"""The ``cxr-triage`` command line: one console script with a subcommand per role."""

from __future__ import annotations

import click

from core.logging import configure_logging
from core.settings import Settings
from training.cli import evaluate, export, train


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """cxr-triage: chest radiograph triage worker for hospital imaging networks."""
    settings = Settings()
    configure_logging(settings.log_level)
    ctx.obj = settings


cli.add_command(train)
cli.add_command(evaluate)
cli.add_command(export)


def main() -> None:
    cli()
