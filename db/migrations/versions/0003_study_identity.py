"""studies: patient, accession number, date and description for the worklist

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 23:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("patient_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("patient_name", sa.String(length=194), nullable=True))
        batch.add_column(sa.Column("accession_number", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("study_date", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("study_description", sa.String(length=64), nullable=True))
        batch.create_index("ix_studies_accession_number", ["accession_number"])


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_index("ix_studies_accession_number")
        batch.drop_column("study_description")
        batch.drop_column("study_date")
        batch.drop_column("accession_number")
        batch.drop_column("patient_name")
        batch.drop_column("patient_id")
