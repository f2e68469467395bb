"""The console's view of the running controller (the shell between reconciler.console.web and
reconciler.controller): reads what the controller holds, and resumes a paused rollout for it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from desired_state.load import Loaded
from reconciler.console.feed import ConsoleFeed
from reconciler.console.pages import HostStatus
from reconciler.engines import Connections
from reconciler.one_pass import compute_plan
from reconciler.pauses import resume_rollout
from reconciler.plan import Plan
from reconciler.store import AuditLog

if TYPE_CHECKING:
    from reconciler.controller import Controller

Pause = tuple[str, str | None, datetime]
PLAN_FRESH = 1.0  # seconds a computed plan serves every page that asks (one observation for many views)


class ControllerBackend:
    def __init__(self, ctl: Controller, feed: ConsoleFeed) -> None:
        self.ctl = ctl
        self.feed = feed
        self._connections = Connections()  # the console's own: a page never waits on a pass's clients
        self._plan_lock = threading.Lock()
        self._plan: tuple[float, int, str, tuple[Plan, int]] | None = None  # at, generation, digest, plan

    def close(self) -> None:
        self._connections.close()

    def identity(self) -> str:
        return self.ctl.identity

    def source(self) -> str:
        return self.ctl.source.describe()

    def loaded(self) -> Loaded | None:
        """The document in force: the last one applied (kept or from the source), else the last valid."""
        return self.ctl.desired.applied or self.ctl.desired.last_valid

    def desired(self) -> dict[str, Any]:
        d = self.ctl.desired
        loaded = self.loaded()
        return {
            "loaded": loaded,
            "digest": loaded.digest if loaded else None,
            "kept": bool(d.enforcing_kept),  # the last-known-good fallback is in force
            "source_error": d.source_error,
            "rejected": d.rejected_digest,
        }

    def statuses(self) -> dict[str, HostStatus]:
        now_wall, now = datetime.now(UTC), time.monotonic()
        return {
            host: HostStatus(
                s.state, s.failures, now_wall + timedelta(seconds=max(0.0, s.retry_at - now)), s.last_error
            )
            for host, s in self.ctl.history.hosts.items()  # replaced whole after each pass
            if s.failures
        }

    def audit(self) -> AuditLog:
        return self.ctl.audit

    def doing(self) -> str | None:
        alive = self.ctl.loop.liveness()
        return alive.doing if alive.running_since is not None else None

    def leader(self) -> bool | None:
        return None if self.ctl.lock is None else self.ctl.lock.is_leader()

    def owners(self) -> dict[str, str | None] | None:
        """host -> the controller that owns it, as this one last decided (run --shard); None unsharded."""
        return None if self.ctl.shard is None else self.ctl.shard.owners()

    def paused(self) -> Pause | None:
        loaded = self.loaded()
        if loaded is None:
            return None
        return self.ctl.pauses.get(loaded.topology.cluster)

    def live_plan(self) -> tuple[Plan, int]:
        """What the next pass would do, observed now (at most once a second, whoever asks)."""
        loaded = self.loaded()
        if loaded is None:
            raise LookupError("no valid desired state yet")
        with self._plan_lock:
            now = time.monotonic()
            kept = self._plan
            if kept and now - kept[0] < PLAN_FRESH and kept[1:3] == (self.feed.generation, loaded.digest):
                return kept[3]
            deferred = self.ctl.history.deferred(now)
            _, _, plan = compute_plan(
                loaded, self._connections, self.ctl.audit, self.ctl.options.passes, deferred
            )
            self._plan = (now, self.feed.generation, loaded.digest, (plan, len(loaded.topology.hosts)))
            return plan, len(loaded.topology.hosts)

    def resume(self, who: str) -> Pause | None:
        loaded = self.loaded()
        if loaded is None:
            return None
        pause = resume_rollout(
            self.ctl.pauses,
            self.ctl.audit,
            loaded.topology.cluster,
            source=self.source(),
            digest=loaded.digest,
            by=who,
        )
        if pause is not None:
            self.feed.changed()
            self.ctl.loop.request("resume")  # the rollout goes on now, not at the next resync
        return pause
