"""Alembic migrations build exactly the schema the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from db.migrate import alembic_config, upgrade
from db.models import Base
from db.session import make_engine


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'migrations.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_migrations_match_the_models_and_downgrade_cleanly(database_url: str) -> None:
    from alembic import command

    upgrade(database_url)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
    assert {"associations", "studies", "instances", "jobs"} <= set(
        inspect(engine).get_table_names()
    )

    command.downgrade(alembic_config(database_url), "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()
