"""Indexes for the audit queries by host and status, by node, and by kind.

At a million action rows, `audit --host H --status S` walked the status index checking each row's
host (20 ms for a host with a few failures, 280 ms for a host with none), and `--node N` or
`--kind K` walked the whole table newest first when few rows matched (280 ms). With these each is
an index seek returning rows in started_at order (about 1 ms for the CLI's 50 rows).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_actions_host_status_started_at", "actions", ["host", "status", "started_at"])
    op.create_index("ix_actions_node_started_at", "actions", ["node", "started_at"])
    op.create_index("ix_actions_kind_started_at", "actions", ["kind", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_actions_kind_started_at", table_name="actions")
    op.drop_index("ix_actions_node_started_at", table_name="actions")
    op.drop_index("ix_actions_host_status_started_at", table_name="actions")
