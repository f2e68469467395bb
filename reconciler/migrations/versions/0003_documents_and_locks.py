"""Last known good desired documents; the leader lock (holder, fencing token) on each run.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id_type() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "desired_documents",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("digest", sa.String(length=128), nullable=False),
        sa.Column("cluster_id", sa.String(length=255), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_applied", sa.DateTime(timezone=True), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_desired_documents"),
    )
    op.create_index(
        "ix_desired_documents_source_digest", "desired_documents", ["source", "digest"], unique=True
    )
    op.create_index(
        "ix_desired_documents_source_last_applied", "desired_documents", ["source", "last_applied"]
    )
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("lock_holder", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("lock_index", _id_type(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("lock_index")
        batch.drop_column("lock_holder")
    op.drop_index("ix_desired_documents_source_last_applied", table_name="desired_documents")
    op.drop_index("ix_desired_documents_source_digest", table_name="desired_documents")
    op.drop_table("desired_documents")
