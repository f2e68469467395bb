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

from desired_state.spec import ContainerSpec, Endpoint
from reconciler.actual import Adoption
from reconciler.consul_api import ConsulError
from reconciler.consul_gates import INTERRUPTED, ConsulGates
from reconciler.containers import ActionError as ActionError
from reconciler.containers import ContainerOps, ExecOptions, Fenced, temporary_name
from reconciler.docker_import import Container, docker
from reconciler.engines import Connections, EngineError, describe_error
from reconciler.gates import before_disruption
from reconciler.leave import ServerLeave
from reconciler.plan import Action, Kind, Plan, is_down
from reconciler.snapshots import SavedSnapshot, SnapshotError, SnapshotTaker
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
    ) -> None:
        self._gates = gates
        # node -> the Consul version each server runs (from its image's tag), as this pass changes them
        self._server_versions = dict(server_versions or {})
        # A raft snapshot before the first server disruption of the pass (None: none is taken)
        self._snapshots = snapshots
        self._snapshot: SavedSnapshot | None = None
        self._snapshot_problem: str | None = None
        # Fencing: None, or why this controller may no longer disrupt anything (it lost leadership);
        # the first is local and cheap, the second asks Consul (before a server is disrupted). A
        # controller that is only stopping (SIGTERM) finishes the action in flight.
        self._leadership_lost = leadership_lost
        self._confirm_leadership = confirm_leadership
        self._desired_servers = desired_servers
        self._server_hold = server_hold  # set: no server is disrupted this pass (the reason)
        self._paused = server_hold is not None  # a stored pause: not even a repair of a server goes on
        self._on_pause = on_pause
        self._connections = connections
        self._endpoints = endpoints
        self._audit = audit
        self._run_id = run_id
        self._cluster = cluster
        self._options = options or ExecOptions()
        self._should_stop = should_stop
        self._seq = 0
        self._lock = threading.Lock()
        self._failed_hosts: set[str] = set()
        self._docker = ContainerOps(cluster, self._options, leadership_lost)
        self._leave = (
            ServerLeave(gates, self._options.stop_timeout, self._fence) if gates is not None else None
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
                    result.results.append(self._record_wait(action, wait))
            result.results += self._run_parallel(parallel)
            serial = phase.serial
            if serial and self._gates is not None:
                serial = phase.rollout(self._gates.view().leader_node)  # the leader as of now
            for action in serial:  # one disruptive server action at a time, cluster-wide
                done = self._run_server(action) if self._gates else self._run_one(action)
                result.results.append(done)
                if done.status == "succeeded" and action.node:
                    self._server_ran(action)
        result.snapshot, result.snapshot_problem = self._snapshot, self._snapshot_problem
        return result

    def _server_ran(self, action: Action) -> None:
        """A server action succeeded: the version its node runs now (none once it is removed)."""
        assert action.node is not None
        if action.kind is Kind.REMOVE or action.desired is None or action.desired.role != "server":
            self._server_versions.pop(action.node, None)
        else:
            self._server_versions[action.node] = image_version(action.desired.image)

    def _record_wait(self, action: Action, why: str) -> ActionResult:
        row = self._audit.record_action(
            self._run_id, action_record(action, self._next_seq()), status="waiting", error=why
        )
        log.warning("%s %s/%s %s", action.kind.value, action.host, action.name, why)
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
            if hold is None:
                hold = self._snapshot_first(action, view.leader_node)
        if hold is not None:
            self._server_hold = hold
            row = self._audit.record_action(
                self._run_id,
                action_record(action, self._next_seq()),
                status="waiting",
                error=f"waiting: {hold}",
            )
            log.warning(
                "%s %s/%s waits: %s",
                action.kind.value,
                action.host,
                action.name,
                hold,
                extra={"host": action.host, "container": action.name, "kind": action.kind.value},
            )
            return ActionResult(action, "waiting", hold, audit_id=row)
        result = self._run_one(action)
        if result.status != "succeeded":
            self._server_hold = f"{action.kind.value} of {action.node} did not succeed"
            return result
        node = action.node or ""
        if action.kind is Kind.REMOVE or (action.desired is not None and action.desired.role != "server"):
            problem = self._gates.wait_removed(node, self._should_stop)
        else:
            problem = self._gates.wait_replaced(node, self._should_stop)
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
            log.error(
                "%s", reason, extra={"host": action.host, "container": action.name, "kind": action.kind.value}
            )
            return ActionResult(action, "failed", reason, result.container_id, result.audit_id)
        return result

    def _snapshot_first(self, action: Action, leader: str | None) -> str | None:
        """Before the first server disruption of the pass, a raft snapshot through the leader, verified
        and kept on the disk (its own audit row, written before it is asked for). None once one is kept,
        or when none is wanted; else why there is none: this and every later server disruption of the
        pass wait, and the next pass tries again. A down server's repair takes none (it restores quorum:
        it must not wait for a snapshot a cluster without quorum cannot give)."""
        if self._snapshots is None or self._snapshot is not None or self._should_stop():
            return None  # stopping: _run_one records the action as skipped
        before = f"{action.kind.value} of server {action.node}"
        record = ActionRecord(
            seq=self._next_seq(),
            host=self._snapshots.host_of(leader) or action.host,
            kind="snapshot",
            node=leader,
            reason=[{"message": f"raft snapshot before {before}, the first server change of this pass"}],
        )
        row = self._audit.start_action(self._run_id, record)
        try:
            saved = self._snapshots.take(leader)
        except (ConsulError, SnapshotError) as exc:
            problem = f"no snapshot, so no server change: {exc}"
            self._snapshot_problem = problem
            self._audit.finish_action(row, status="failed", error=problem)
            log.warning("%s", problem, extra={"host": record.host, "kind": "snapshot"})
            return problem
        self._snapshot = saved
        kept = (
            f"kept {saved.path} ({saved.size} bytes, raft index {saved.index}, sha256 {saved.sha256}), "
            f"taken through {saved.leader}"
        )
        self._audit.finish_action(row, status="succeeded", reason=[*(record.reason or []), {"message": kept}])
        self._audit.record_snapshot(
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
        log.info("snapshot before %s: %s", before, kept, extra={"host": record.host, "kind": "snapshot"})
        pruned = self._snapshots.prune()
        if pruned:
            self._audit.snapshots_pruned([str(path) for path in pruned])
            log.info("pruned %d old snapshot(s), keeping the newest %d", len(pruned), self._snapshots.keep)
        return None

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
        if skip_why is not None:
            row = self._audit.record_action(self._run_id, record, status="skipped", error=skip_why)
            return ActionResult(action, "skipped", skip_why, audit_id=row)

        row = self._audit.start_action(self._run_id, record)  # written before acting
        started = time.monotonic()
        try:
            container_id = self._perform(action)
        except Fenced as exc:
            self._audit.finish_action(row, status="interrupted", error=exc.args[0])
            log.warning("%s", exc.args[0], extra={"host": action.host, "container": action.name})
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
                extra={
                    "host": action.host,
                    "container": action.name,
                    "kind": action.kind.value,
                    "reason": reason,
                },
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
            extra={
                "host": action.host,
                "container": action.name,
                "kind": action.kind.value,
                "reason": reason,
            },
        )
        return ActionResult(action, "succeeded", container_id=container_id, audit_id=row)

    # --- the Docker work --------------------------------------------------------------------------

    def _client(self, host: str) -> docker.DockerClient:
        return self._connections.get(host, self._endpoints[host])

    def _perform(self, action: Action) -> str | None:
        client = self._client(action.host)
        if action.kind is Kind.CREATE:
            assert action.desired is not None
            # Made under a temporary name and renamed once its files (the gossip key) are in place: a
            # crash in between leaves a temporary container the next pass removes, never an agent
            # under its final name without its key.
            spec = action.desired
            temporary = temporary_name(spec)
            self._docker.remove_if_present(client, temporary)  # a leftover of an interrupted creation
            container = self._create(client, spec, temporary)
            self._docker.rename(container, spec.name, action)
            self._docker.start_and_wait(container, action)
            return str(container.id)
        if action.kind is Kind.START:
            assert action.observed is not None
            container = client.containers.get(action.observed.id)
            if container.status == "paused":
                container.unpause()
            self._docker.restore_restart_policy(container, action)
            self._docker.start_and_wait(container, action)
            return str(container.id)
        if action.kind is Kind.ADOPT_IN_PLACE:
            assert action.desired is not None and action.observed is not None
            adoption = Adoption(action.observed.id, action.desired.spec_hash(), action.desired.record())
            self._audit.state.adopt(self._cluster, action.host, action.name, adoption)
            return action.observed.id  # nothing touched: it already runs as its spec says
        if action.kind in (Kind.REPLACE, Kind.ADOPT):
            assert action.desired is not None and action.observed is not None
            return self._replace(client, action, action.desired, action.observed.id)
        if action.kind is Kind.REMOVE:
            assert action.observed is not None
            self._leave_if_server(client, action, action.observed.id)
            self._fence(action, "stopping")
            self._docker.stop_and_remove(client, action.observed.id, action)
            return action.observed.id
        raise ActionError(f"host {action.host}: {action.kind.value} is not an action the executor performs")

    def _replace(self, client: docker.DockerClient, action: Action, spec: ContainerSpec, old_id: str) -> str:
        temporary = temporary_name(spec)
        self._docker.remove_if_present(client, temporary)  # a leftover of an interrupted replacement
        new = self._create(client, spec, temporary)
        try:
            self._leave_if_server(client, action, old_id)
            self._fence(action, "stopping the old container")
        except Exception:
            new.remove(force=True)  # nothing was stopped: leave no temporary container behind either
            raise
        self._docker.stop_and_remove(client, old_id, action)
        self._docker.rename(new, spec.name, action)
        self._docker.start_and_wait(new, action)
        return str(new.id)

    def _create(self, client: docker.DockerClient, spec: ContainerSpec, name: str) -> Container:
        if spec.role == "registrator" and self._gates is not None and spec.agent_http:
            problem = self._gates.wait_agent(spec.agent_http)
            if problem is not None:
                raise ActionError(f"host {spec.host}: registrator not (re)created: {problem}")
        return self._docker.create(client, spec, name)

    def _leave_if_server(self, client: docker.DockerClient, action: Action, container_id: str) -> None:
        """Never stop a server that may still be a voter without a graceful leave (reconciler/leave.py);
        without the gates there is no Consul API to leave through."""
        if self._leave is not None:
            self._leave.before_stop(client, action, container_id)

    def _fence(self, action: Action, step: str, *, server: bool = False) -> None:
        """Right before a disruptive step: may this controller still act? For a server, Consul itself
        must confirm that the lock key still names this controller's session."""
        why = self._leadership_lost()
        if why is None and server:
            why = self._confirm_leadership()
        if why is not None:
            what = f"{action.kind.value} of {action.name}"
            raise Fenced(f"host {action.host}: {what} stopped before {step}: {why}")


__all__ = ["ActionError", "ApplyResult", "EngineError", "ExecOptions", "Executor"]
