"""The raft snapshot before the first server disruption of a pass (the executor asks; see
reconciler/snapshots.py for how one is taken, verified and kept)."""

from __future__ import annotations

import logging

from reconciler.consul_api import ConsulError
from reconciler.plan import Action
from reconciler.snapshots import SavedSnapshot, SnapshotError, SnapshotTaker
from reconciler.store import ActionRecord, AuditLog

log = logging.getLogger("consul_reconciler.execute")


class SnapshotStep:
    """One pass's snapshot: taken once, before the first server disruption; ``saved`` once kept,
    ``problem`` while none could be."""

    def __init__(self, taker: SnapshotTaker, audit: AuditLog, run_id: int, cluster: str) -> None:
        self._taker = taker
        self._audit = audit
        self._run_id = run_id
        self._cluster = cluster
        self.saved: SavedSnapshot | None = None
        self.problem: str | None = None

    def before(self, action: Action, leader: str | None, seq: int) -> str | None:
        """Before the first server disruption of the pass, a raft snapshot through the leader, verified
        and kept on the disk (its own audit row, written before it is asked for). None once one is kept,
        or when none is wanted; else why there is none: this and every later server disruption of the
        pass wait, and the next pass tries again. A down server's repair takes none (it restores quorum:
        it must not wait for a snapshot a cluster without quorum cannot give)."""
        if self.saved is not None:
            return None
        before = f"{action.kind.value} of server {action.node}"
        record = ActionRecord(
            seq=seq,
            host=self._taker.host_of(leader) or action.host,
            kind="snapshot",
            node=leader,
            reason=[{"message": f"raft snapshot before {before}, the first server change of this pass"}],
        )
        row = self._audit.start_action(self._run_id, record)
        try:
            saved = self._taker.take(leader)
        except (ConsulError, SnapshotError) as exc:
            problem = f"no snapshot, so no server change: {exc}"
            self.problem = problem
            self._audit.finish_action(row, status="failed", error=problem)
            log.warning("%s", problem, extra={"run": self._run_id, "host": record.host, "kind": "snapshot"})
            return problem
        self.saved = saved
        kept = (
            f"kept {saved.path} ({saved.size} bytes, raft index {saved.index}, sha256 {saved.sha256}), "
            f"taken through {saved.leader}"
        )
        self._audit.finish_action(row, status="succeeded", reason=[*(record.reason or []), {"message": kept}])
        self._audit.snapshots.record(
            cluster_id=self._cluster,
            run_id=self._run_id,
            action_id=row,
            taken_at=saved.taken_at,
            path=str(saved.path),
            size=saved.size,
            raft_index=saved.index,
            sha256=saved.sha256,
            leader=saved.leader,
        )
        log.info(
            "snapshot before %s: %s",
            before,
            kept,
            extra={"run": self._run_id, "host": record.host, "kind": "snapshot"},
        )
        pruned = self._taker.prune()
        if pruned:
            self._audit.snapshots.pruned([str(path) for path in pruned])
            log.info("pruned %d old snapshot(s), keeping the newest %d", len(pruned), self._taker.keep)
        return None
