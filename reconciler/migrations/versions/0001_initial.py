"""Initial schema: runs, actions, known_hosts.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id_type() -> sa.types.TypeEngine[int]:
    # BIGINT on servers; SQLite only auto-increments an "INTEGER PRIMARY KEY".
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("cluster_id", sa.String(length=255), nullable=False),
        sa.Column("started_at", _ts(), nullable=False),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("trigger", sa.String(length=64), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(length=128), nullable=True),
        sa.Column("controller", sa.String(length=255), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_index("ix_runs_cluster_id_started_at", "runs", ["cluster_id", "started_at"])

    op.create_table(
        "actions",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("run_id", _id_type(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=True),
        sa.Column("role", sa.String(length=32), nullable=True),
        sa.Column("container", sa.String(length=255), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("old_hash", sa.String(length=128), nullable=True),
        sa.Column("new_hash", sa.String(length=128), nullable=True),
        sa.Column("image", sa.String(length=512), nullable=True),
        sa.Column("container_id", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", _ts(), nullable=False),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_actions"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_actions_run_id_runs"),
    )
    op.create_index("ix_actions_run_id", "actions", ["run_id"])
    op.create_index("ix_actions_host_started_at", "actions", ["host", "started_at"])
    op.create_index("ix_actions_status_started_at", "actions", ["status", "started_at"])
    op.create_index("ix_actions_started_at", "actions", ["started_at"])

    op.create_table(
        "known_hosts",
        sa.Column("cluster_id", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("first_seen", _ts(), nullable=False),
        sa.Column("last_seen", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("cluster_id", "host", name="pk_known_hosts"),
    )


def downgrade() -> None:
    op.drop_table("known_hosts")
    op.drop_index("ix_actions_started_at", table_name="actions")
    op.drop_index("ix_actions_status_started_at", table_name="actions")
    op.drop_index("ix_actions_host_started_at", table_name="actions")
    op.drop_index("ix_actions_run_id", table_name="actions")
    op.drop_table("actions")
    op.drop_index("ix_runs_cluster_id_started_at", table_name="runs")
    op.drop_table("runs")
