"""The raft snapshots the controller took before server changes (reconciler/snapshots.py), in the audit
database: where each is kept, its size, raft index and SHA-256, and when its file was pruned."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from reconciler.store.database import Database
from reconciler.store.models import SnapshotModel, _as_utc
from reconciler.store.rows import SnapshotRow


class SnapshotLog:
    """Reads and writes of the snapshots table, each in its own short transaction of ``db``.  Reach it
    as ``AuditLog.snapshots``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(
        self,
        *,
        cluster_id: str,
        run_id: int | None,
        action_id: int | None,
        taken_at: datetime,
        path: str,
        size: int,
        raft_index: int,
        sha256: str,
        leader: str | None,
    ) -> int:
        """Record a snapshot kept on the disk; returns its id."""
        row = SnapshotModel(
            cluster_id=cluster_id,
            run_id=run_id,
            action_id=action_id,
            taken_at=_as_utc(taken_at),
            path=path,
            size=size,
            raft_index=raft_index,
            sha256=sha256,
            leader=leader,
            pruned_at=None,
        )
        with self._db._write() as session:
            session.add(row)
            session.flush()
            return row.id

    def pruned(self, paths: list[str]) -> int:
        """Mark the snapshots kept at ``paths`` as pruned (their files deleted); how many were marked."""
        if not paths:
            return 0
        with self._db._write() as session:
            result = session.execute(
                update(SnapshotModel)
                .where(SnapshotModel.path.in_(paths), SnapshotModel.pruned_at.is_(None))
                .values(pruned_at=self._db._now())
                .execution_options(synchronize_session=False)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def newest(self, *, cluster_id: str | None = None, limit: int | None = 20) -> list[SnapshotRow]:
        """Snapshots taken, newest first."""
        stmt = select(SnapshotModel).order_by(SnapshotModel.taken_at.desc(), SnapshotModel.id.desc())
        if cluster_id is not None:
            stmt = stmt.where(SnapshotModel.cluster_id == cluster_id)
        if limit is not None and limit > 0:
            stmt = stmt.limit(limit)
        with self._db._read() as session:
            return [SnapshotRow._from_model(m) for m in session.scalars(stmt)]
