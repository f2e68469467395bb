"""Carry out a plan through the Docker SDK.

The plan says what runs how (``Plan.phases``): phases in the plan's order
(servers, clients, registrators, then removals); inside a phase hosts run in
parallel, each host's actions in order, then the disruptive server actions
(replace, remove, adopt) one at a time across the cluster, the first of them
after a raft snapshot (no snapshot, no server change: they wait).
An action that fails stops the rest of its host's actions in this pass (they
are recorded as skipped); other hosts go on.

Every action's audit row is written before Docker is touched and finished
after. A replacement creates the new container under a temporary name first
(so a bad image or spec fails before the old container is stopped), then
stops and removes the old one and renames the new one into place. A crash at
any point leaves state the next pass repairs: a missing container is created,
a leftover temporary container is ours but not desired and is removed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from desired_state.spec import Endpoint
from reconciler.consul_gates import INTERRUPTED, ConsulGates
from reconciler.containers import ActionError as ActionError
from reconciler.containers import ExecOptions, Fenced
from reconciler.engines import Connections, EngineError, describe_error
from reconciler.gates import before_disruption
from reconciler.plan import Action, Kind, Plan, is_down
from reconciler.snapshot_step import SnapshotStep
from reconciler.snapshots import SavedSnapshot, SnapshotTaker
from reconciler.steps import Steps
from reconciler.store import ActionRecord, AuditLog
from reconciler.versions import Version, client_wait, image_version

log = logging.getLogger("consul_reconciler.execute")


STOPPED_ACTING = "skipped: the controller stopped acting (stopping, or no longer the leader)"


@dataclass
class ActionResult:
    action: Action
    status: str  # succeeded | failed | skipped | waiting
    error: str | None = None
    container_id: str | None = None
    audit_id: int | None = None


@dataclass
class ApplyResult:
    results: list[ActionResult] = field(default_factory=list)
    snapshot: SavedSnapshot | None = None  # taken before the first server change of the pass
    snapshot_problem: str | None = None  # why none could be taken (the server changes waited)

    @property
    def failed(self) -> list[ActionResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def waiting(self) -> list[ActionResult]:
        return [r for r in self.results if r.status == "waiting"]

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)


def action_record(action: Action, seq: int) -> ActionRecord:
    """The audit row's account of a planned action: the one place a plan's action becomes a record
    (what the executor writes before acting, and the pass's rows for blocked names)."""
    return ActionRecord(
        seq=seq,
        host=action.host,
        kind=action.kind.value,
        node=action.node,
        role=action.role,
        container=action.name,
        reason=[c.to_dict() for c in action.reasons],
        old_hash=action.old_hash,
        new_hash=action.new_hash,
        image=action.image,
        container_id=action.observed.id if action.observed else None,
    )


class Executor:
    def __init__(
        self,
        connections: Connections,
        endpoints: Mapping[str, Endpoint],
        audit: AuditLog,
        run_id: int,
        cluster: str,
        options: ExecOptions | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        gates: ConsulGates | None = None,
        desired_servers: frozenset[str] = frozenset(),
        server_hold: str | None = None,
        on_pause: Callable[[str], None] = lambda reason: None,
        confirm_leadership: Callable[[], str | None] = lambda: None,
        leadership_lost: Callable[[], str | None] = lambda: None,
        server_versions: Mapping[str, Version | None] | None = None,
        snapshots: SnapshotTaker | None = None,
        may_act: Callable[[str], str | None] = lambda host: None,
    ) -> None:
        """``may_act(host)``: asked right before every action and every disruptive step on ``host``;
        a reason means this controller may not act on that host now (sharding: reconciler.sharding)."""
        self._may_act = may_act
        self._gates = gates
        # node -> the Consul version each server runs (from its image's tag), as this pass changes them
        self._server_versions = dict(server_versions or {})
        # A raft snapshot before the first server disruption of the pass (None: none is taken)
        self._snapshots = snapshots
        self._snapshot_step = SnapshotStep(snapshots, audit, run_id, cluster) if snapshots else None
        self._desired_servers = desired_servers
        self._server_hold = server_hold  # set: no server is disrupted this pass (the reason)
        self._paused = server_hold is not None  # a stored pause: not even a repair of a server goes on
        self._on_pause = on_pause
        self._audit = audit
        self._run_id = run_id
        self._cluster = cluster
        self._options = options or ExecOptions()
        self._should_stop = should_stop
        self._seq = 0
        self._lock = threading.Lock()
        self._failed_hosts: set[str] = set()
        # how each action is carried out, with the fencing (confirm_leadership, leadership_lost)
        self._steps = Steps(
            connections,
            endpoints,
            audit,
            cluster,
            self._options,
            gates,
            confirm_leadership,
            leadership_lost,
            may_act=may_act,
        )

    # --- orchestration --------------------------------------------------------------------------

    def apply(self, plan: Plan) -> ApplyResult:
        result = ApplyResult()
        for phase in plan.phases():
            parallel = []
            for action in phase.parallel:
                wait = client_wait(action, self._server_versions)
                if wait is None:
                    parallel.append(action)
                else:
                    result.results.append(self._record_wait(action, wait, prefix="waiting: "))
            result.results += self._run_parallel(parallel)
            serial = phase.serial
            if serial and self._gates is not None:
                serial = phase.rollout(self._gates.view().leader_node)  # the leader as of now
            for action in serial:  # one disruptive server action at a time, cluster-wide
                done = self._run_server(action) if self._gates else self._run_one(action)
                result.results.append(done)
                if done.status == "succeeded" and action.node:
                    self._server_ran(action)
        if self._snapshot_step is not None:
            result.snapshot, result.snapshot_problem = self._snapshot_step.saved, self._snapshot_step.problem
        return result

    def _server_ran(self, action: Action) -> None:
        """A server action succeeded: the version its node runs now (none once it is removed)."""
        assert action.node is not None
        if action.kind is Kind.REMOVE or action.desired is None or action.desired.role != "server":
            self._server_versions.pop(action.node, None)
        else:
            self._server_versions[action.node] = image_version(action.desired.image)

    def _record_wait(self, action: Action, why: str, prefix: str = "") -> ActionResult:
        row = self._audit.record_action(
            self._run_id, action_record(action, self._next_seq()), status="waiting", error=prefix + why
        )
        log.warning(
            "%s %s/%s waits: %s",
            action.kind.value,
            action.host,
            action.name,
            why,
            extra=self._fields(action),
        )
        return ActionResult(action, "waiting", why, audit_id=row)

    def _run_server(self, action: Action) -> ActionResult:
        """A gated disruption of a server: before it, every other server healthy; after it, the
        replacement (or the smaller cluster) healthy for the stabilisation time, within the deadline."""
        assert self._gates is not None
        down = is_down(action)
        # A server already down: bringing it back (even with a new spec) is a repair, not a disruption;
        # it is what restores quorum when a second server was lost meanwhile.
        hold = None if down and not self._paused else self._server_hold
        if hold is None and not down:
            view = self._gates.view()
            hold = before_disruption(view, action.node or "", self._desired_servers)
            if hold is None and self._snapshot_step is not None and not self._should_stop():
                # stopping: _run_one records the action as skipped
                hold = self._snapshot_step.before(action, view.leader_node, self._next_seq())
        if hold is not None:
            self._server_hold = hold
            return self._record_wait(action, hold, prefix="waiting: ")
        result = self._run_one(action)
        if result.status != "succeeded":
            self._server_hold = f"{action.kind.value} of {action.node} did not succeed"
            return result
        node = action.node or ""
        if action.kind is Kind.REMOVE or (action.desired is not None and action.desired.role != "server"):
            problem = self._gates.wait_removed(node, self._should_stop)
        else:
            problem = self._gates.wait_replaced(
                node, self._should_stop, self._restart_watch(action.host, result.container_id)
            )
        if problem is not None and problem.startswith(INTERRUPTED):
            self._server_hold = problem  # no pause: the next pass repairs, and every gate re-checks
            log.warning("%s", problem)
            return result
        if problem is not None:
            reason = f"rollout paused after {action.kind.value} of {node}: {problem}"
            self._server_hold = reason
            self._on_pause(reason)
            assert result.audit_id is not None
            self._audit.finish_action(result.audit_id, status="failed", error=reason)
            log.error("%s", reason, extra=self._fields(action))
            return ActionResult(action, "failed", reason, result.container_id, result.audit_id)
        return result

    def _restart_watch(self, host: str, container_id: str | None) -> Callable[[], str | None]:
        """For the health gate after a server is (re)made: a reason at each look that finds its new
        container restarted since the last one (a crash loop Consul's health does not show)."""
        if container_id is None:
            return lambda: None
        seen = [0]  # a new container: no restart yet

        def restarted() -> str | None:
            try:
                count = self._steps.restarts(host, container_id)
            except EngineError as exc:
                return f"its container cannot be inspected: {exc}"
            if count > seen[0]:
                seen[0] = count
                return f"its container on {host} was restarted by the engine (restart count {count})"
            return None

        return restarted

    def _run_parallel(self, actions: Sequence[Action]) -> list[ActionResult]:
        by_host: dict[str, list[Action]] = {}
        for action in actions:
            by_host.setdefault(action.host, []).append(action)
        if not by_host:
            return []
        workers = min(self._options.max_workers, self._options.max_parallel, len(by_host))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="apply") as pool:
            chunks = pool.map(lambda items: [self._run_one(a) for a in items], by_host.values())
            return [r for chunk in chunks for r in chunk]

    def _fields(self, action: Action) -> dict[str, object]:
        """What a JSON log line about ``action`` carries as fields (--log-format json)."""
        return {"run": self._run_id, "host": action.host, "container": action.name, "kind": action.kind.value}

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _run_one(self, action: Action) -> ActionResult:
        record = action_record(action, self._next_seq())
        reason = record.reason
        skip_why = None
        if action.host in self._failed_hosts:
            skip_why = "skipped: an earlier action on this host failed in this pass"
        elif self._should_stop():
            skip_why = STOPPED_ACTING
        elif (not_mine := self._may_act(action.host)) is not None:
            skip_why = f"skipped: {not_mine}"
        if skip_why is not None:
            row = self._audit.record_action(self._run_id, record, status="skipped", error=skip_why)
            return ActionResult(action, "skipped", skip_why, audit_id=row)

        row = self._audit.start_action(self._run_id, record)  # written before acting
        started = time.monotonic()
        try:
            container_id = self._perform(action)
        except Fenced as exc:
            self._audit.finish_action(row, status="interrupted", error=exc.args[0])
            log.warning("%s", exc.args[0], extra=self._fields(action))
            return ActionResult(action, "skipped", STOPPED_ACTING, audit_id=row)
        except Exception as exc:
            message = exc.args[0] if isinstance(exc, ActionError) else describe_error(exc)
            with self._lock:
                self._failed_hosts.add(action.host)
            self._audit.finish_action(row, status="failed", error=message)
            log.error(
                "%s %s/%s failed: %s",
                action.kind.value,
                action.host,
                action.name,
                message,
                extra={**self._fields(action), "reason": reason},
            )
            return ActionResult(action, "failed", message, audit_id=row)
        self._audit.finish_action(row, status="succeeded", container_id=container_id)
        log.info(
            "%s %s/%s: %s (%.2fs)",
            action.kind.value,
            action.host,
            action.name,
            "; ".join(str(c) for c in action.reasons),
            time.monotonic() - started,
            extra={**self._fields(action), "reason": reason},
        )
        return ActionResult(action, "succeeded", container_id=container_id, audit_id=row)

    # --- carrying an action out -------------------------------------------------------------------

    def _perform(self, action: Action) -> str | None:
        return self._steps.perform(action)


__all__ = ["ActionError", "ApplyResult", "EngineError", "ExecOptions", "Executor"]
