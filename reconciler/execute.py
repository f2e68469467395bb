"""Carry out a plan through the Docker SDK.

The plan says what runs how (``Plan.phases``): phases in the plan's order
(servers, clients, registrators, then removals); inside a phase hosts run in
parallel, each host's actions in order, then the disruptive server actions
(replace, remove, adopt) one at a time across the cluster.
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

import contextlib
import io
import json
import logging
import tarfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from desired_state.secrets import SecretError, resolve
from desired_state.spec import ContainerSpec, Endpoint
from reconciler import labels as L
from reconciler.consul_api import ConsulError, ConsulUnreachable
from reconciler.consul_gates import INTERRUPTED, ConsulGates
from reconciler.docker_import import Container, docker
from reconciler.engines import Connections, EngineError, describe_error
from reconciler.gates import before_disruption
from reconciler.plan import Action, Kind, Plan, is_down
from reconciler.store import ActionRecord, AuditLog

log = logging.getLogger("consul_reconciler.execute")


STOPPED_ACTING = "skipped: the controller stopped acting (stopping, or no longer the leader)"
# How long a server seen "left" after a leave call that did not answer gets to exit by itself: Consul's
# leave_drain_time (5 s) plus raftRemoveGracePeriod (5 s), with a margin (agent/consul/server.go, Leave)
LEAVE_EXIT_GRACE = 15.0


class ActionError(Exception):
    """An action could not be carried out; the message names host, container and cause."""


class Fenced(ActionError):
    """The controller lost the right to act (stopping, or no longer the leader) in the middle of an
    action: it stopped before the next disruptive step. The next pass (here or on the new leader)
    finds what was done and goes on from there."""


@dataclass
class ExecOptions:
    pull: bool = True
    stop_timeout: int = 30
    start_timeout: float = 30.0
    max_workers: int = 32
    max_parallel: int = 32  # client/registrator changes in flight at once (hosts in parallel)
    pull_timeout: float = 600.0  # an image pull that takes longer is abandoned
    environ: Mapping[str, str] | None = None  # where secret references resolve (default os.environ)


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
    ) -> None:
        self._gates = gates
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

    # --- orchestration --------------------------------------------------------------------------

    def apply(self, plan: Plan) -> ApplyResult:
        result = ApplyResult()
        for phase in plan.phases():
            result.results += self._run_parallel(phase.parallel)
            serial = phase.serial
            if serial and self._gates is not None:
                serial = phase.rollout(self._gates.view().leader_node)  # the leader as of now
            for action in serial:  # one disruptive server action at a time, cluster-wide
                result.results.append(self._run_server(action) if self._gates else self._run_one(action))
        return result

    def _run_server(self, action: Action) -> ActionResult:
        """A gated disruption of a server: before it, every other server healthy; after it, the
        replacement (or the smaller cluster) healthy for the stabilisation time, within the deadline."""
        assert self._gates is not None
        down = is_down(action)
        # A server already down: bringing it back (even with a new spec) is a repair, not a disruption;
        # it is what restores quorum when a second server was lost meanwhile.
        hold = None if down and not self._paused else self._server_hold
        if hold is None and not down:
            hold = before_disruption(self._gates.view(), action.node or "", self._desired_servers)
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
            temporary = _temporary_name(spec)
            self._remove_if_present(client, temporary)  # a leftover of an interrupted creation
            container = self._create(client, spec, temporary)
            self._rename(container, spec.name, action)
            self._start_and_wait(container, action)
            return str(container.id)
        if action.kind is Kind.START:
            assert action.observed is not None
            container = client.containers.get(action.observed.id)
            if container.status == "paused":
                container.unpause()
            self._restore_restart_policy(container, action)
            self._start_and_wait(container, action)
            return str(container.id)
        if action.kind in (Kind.REPLACE, Kind.ADOPT):
            assert action.desired is not None and action.observed is not None
            return self._replace(client, action, action.desired, action.observed.id)
        if action.kind is Kind.REMOVE:
            assert action.observed is not None
            self._leave_if_server(client, action, action.observed.id)
            self._fence(action, "stopping")
            self._stop_and_remove(client, action.observed.id, action)
            return action.observed.id
        raise ActionError(f"host {action.host}: {action.kind.value} is not an action the executor performs")

    def _replace(self, client: docker.DockerClient, action: Action, spec: ContainerSpec, old_id: str) -> str:
        temporary = _temporary_name(spec)
        self._remove_if_present(client, temporary)  # a leftover of an interrupted replacement
        new = self._create(client, spec, temporary)
        try:
            self._leave_if_server(client, action, old_id)
            self._fence(action, "stopping the old container")
        except Exception:
            new.remove(force=True)  # nothing was stopped: leave no temporary container behind either
            raise
        self._stop_and_remove(client, old_id, action)
        self._rename(new, spec.name, action)
        self._start_and_wait(new, action)
        return str(new.id)

    def _rename(self, container: Container, name: str, action: Action) -> None:
        try:
            container.rename(name)
        except docker.errors.APIError as exc:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
            raise ActionError(
                f"host {action.host}: cannot name the new container {name}: {describe_error(exc)}"
            ) from None

    def _fence(self, action: Action, step: str, *, server: bool = False) -> None:
        """Right before a disruptive step: may this controller still act? For a server, Consul itself
        must confirm that the lock key still names this controller's session."""
        why = self._leadership_lost()
        if why is None and server:
            why = self._confirm_leadership()
        if why is not None:
            what = f"{action.kind.value} of {action.name}"
            raise Fenced(f"host {action.host}: {what} stopped before {step}: {why}")

    def _leave_if_server(self, client: docker.DockerClient, action: Action, container_id: str) -> None:
        """Never stop a server that may still be a voter without a graceful leave: its restart policy is
        set to "no" (so Docker does not bring it back), the agent is asked to leave, and we wait for it
        to exit. A server that is not running any more has nothing to leave.

        Consul answers the leave only once the agent has left, seconds later for a server. When the call
        fails (a timeout, or the connection closed by the exiting agent), what is observed decides: the
        other servers see the member ``left``, or its container exited, and it has left; otherwise the
        leave failed, the restart policy is put back as it was and nothing is stopped."""
        if self._gates is None or not action.observed or not action.observed.is_consul_server:
            return
        try:
            container = client.containers.get(container_id)
        except docker.errors.NotFound:
            return
        if container.status != "running":
            return  # stopped, or crash-looping ("restarting"): no agent there to leave
        http = action.observed.agent_http
        if not http:
            raise ActionError(
                f"host {action.host}: server {action.name} has no agent address label; not "
                "stopping a possible voter without a leave"
            )
        self._fence(action, f"the leave of server {action.node}", server=True)
        policy = dict(container.attrs.get("HostConfig", {}).get("RestartPolicy") or {"Name": "no"})
        container.update(restart_policy={"Name": "no"})
        try:
            self._gates.leave(http)
        except ConsulError as exc:
            left = self._left_anyway(container, action, patient=isinstance(exc, ConsulUnreachable))
            if left is None:
                container.update(restart_policy=policy)
                raise ActionError(
                    f"host {action.host}: server {action.node} did not leave gracefully ({exc}); "
                    "not stopping it"
                ) from None
            log.warning("server %s: the leave call ended with %s, but %s", action.node, exc, left)
            # Seen left, but its leave is not over: Consul's Server.Leave, after leaving the LAN pool,
            # waits leave_drain_time (5 s) so that the others' probes still find it, then up to 5 s more
            # to be removed from the raft peers, and only then does the agent exit. Stopped before, the
            # members the leave had not reached yet see it fail (seen against real Consul). So it gets
            # that long to exit by itself.
            exit_within = max(self._options.stop_timeout, LEAVE_EXIT_GRACE)
        else:
            exit_within = self._options.stop_timeout
        deadline = time.monotonic() + exit_within
        while time.monotonic() < deadline:
            container.reload()
            if container.status not in ("running", "restarting"):
                log.info("server %s left the cluster and exited", action.node)
                return
            time.sleep(0.1)
        log.warning("server %s left but is still running after %gs; stopping it", action.node, exit_within)

    def _left_anyway(self, container: Container, action: Action, *, patient: bool) -> str | None:
        """After a leave call that did not answer: has the server left all the same? (what shows it, or
        None). ``patient``: the call got no answer, so the agent may still be leaving; look for up to
        the stop timeout. Otherwise the agent refused, and one look decides."""
        assert self._gates is not None
        deadline = time.monotonic() + (self._options.stop_timeout if patient else 0.0)
        while True:
            container.reload()
            if container.status != "running":
                return f"its container is not running ({container.status})"
            status = self._gates.member_status(action.node or "")
            if status == "left":
                return "the other servers see it left"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)

    def _create(self, client: docker.DockerClient, spec: ContainerSpec, name: str) -> Container:
        if spec.role == "registrator" and self._gates is not None and spec.agent_http:
            problem = self._gates.wait_agent(spec.agent_http)
            if problem is not None:
                raise ActionError(f"host {spec.host}: registrator not (re)created: {problem}")
        self._ensure_image(client, spec)
        files = self._secret_archive(spec)  # resolve before creating anything
        kwargs: dict[str, Any] = dict(
            image=spec.image,
            command=list(spec.command),
            name=name,
            labels=L.labels_for(self._cluster, spec),
            detach=True,
            network_mode=spec.network_mode,
            restart_policy={"Name": spec.restart_policy},
            volumes={
                m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in spec.mounts
            },
            environment=[f"{k}={v}" for k, v in spec.env],
        )
        if spec.ports:
            kwargs["ports"] = _port_bindings(spec)
        try:
            container = client.containers.create(**kwargs)
        except docker.errors.ImageNotFound:
            raise ActionError(f"host {spec.host}: image {spec.image} is not present on this host") from None
        except docker.errors.APIError as exc:
            raise ActionError(
                f"host {spec.host}: cannot create container {name}: {describe_error(exc)}"
            ) from None
        if files is not None:
            try:
                container.put_archive("/", files)
            except docker.errors.APIError as exc:
                container.remove(force=True)
                raise ActionError(
                    f"host {spec.host}: cannot write the secret files into {name}: {describe_error(exc)}"
                ) from None
        return container

    def _ensure_image(self, client: docker.DockerClient, spec: ContainerSpec) -> None:
        try:
            client.images.get(spec.image)
            return
        except docker.errors.ImageNotFound:
            pass
        if not self._options.pull:
            raise ActionError(
                f"host {spec.host}: image {spec.image} is not present and pulling is off (--no-pull)"
            )
        log.info("pulling %s on %s", spec.image, spec.host)
        repository, tag = _split_image(spec.image)
        deadline = time.monotonic() + self._options.pull_timeout
        try:
            for progress in client.api.pull(repository, tag=tag, stream=True, decode=True):
                if progress.get("error"):
                    why = progress["error"]
                    raise ActionError(f"host {spec.host}: cannot pull image {spec.image}: {why}")
                lost = self._leadership_lost()
                if lost is not None:
                    raise Fenced(f"host {spec.host}: pulling {spec.image} abandoned: {lost}")
                if time.monotonic() > deadline:
                    raise ActionError(
                        f"host {spec.host}: pulling {spec.image} took more than "
                        f"{self._options.pull_timeout:.0f}s; abandoned"
                    )
        except docker.errors.APIError as exc:
            raise ActionError(
                f"host {spec.host}: cannot pull image {spec.image}: {describe_error(exc)}"
            ) from None

    def _secret_archive(self, spec: ContainerSpec) -> bytes | None:
        if not spec.secret_files:
            return None
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for secret in spec.secret_files:
                try:
                    value = resolve(secret.ref, self._options.environ)
                except SecretError as exc:
                    raise ActionError(f"host {spec.host}: secret {secret.ref.describe()}: {exc}") from None
                data = json.dumps({secret.key: value}).encode()
                info = tarfile.TarInfo(secret.path.lstrip("/"))
                info.size = len(data)
                info.mode = 0o644
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    @staticmethod
    def _restore_restart_policy(container: Container, action: Action) -> None:
        """A server whose leave was begun by a controller that died since exits with the restart policy
        set to "no" (so Docker would not bring it back mid-leave). Started again, it gets the spec's
        policy back, or Docker would leave it down the next time it dies."""
        if action.desired is None:
            return
        current = (container.attrs.get("HostConfig", {}).get("RestartPolicy") or {}).get("Name") or "no"
        if current != action.desired.restart_policy:
            container.update(restart_policy={"Name": action.desired.restart_policy})
            log.info(
                "%s/%s: restart policy %r restored to %r", action.host, action.name, current,
                action.desired.restart_policy,
            )  # fmt: skip

    def _start_and_wait(self, container: Container, action: Action) -> None:
        container.start()
        deadline = time.monotonic() + self._options.start_timeout
        while True:
            container.reload()
            state = container.attrs.get("State", {})
            if state.get("Running"):
                return
            if state.get("Status") in ("exited", "dead"):
                tail = container.logs(tail=5).decode("utf-8", "replace").strip().replace("\n", " | ")
                raise ActionError(
                    f"host {action.host}: container {action.name} exited with code {state.get('ExitCode')} "
                    f"right after start" + (f"; last output: {tail[-400:]}" if tail else "")
                )
            if time.monotonic() > deadline:
                raise ActionError(
                    f"host {action.host}: container {action.name} not running after "
                    f"{self._options.start_timeout:.0f}s (state {state.get('Status')})"
                )
            time.sleep(0.05)

    def _stop_and_remove(self, client: docker.DockerClient, container_id: str, action: Action) -> None:
        try:
            container = client.containers.get(container_id)
        except docker.errors.NotFound:
            return  # already gone: the goal of this step
        if container.status in ("running", "restarting", "paused"):
            container.stop(timeout=self._options.stop_timeout)
        try:
            container.remove(v=False)
        except docker.errors.NotFound:
            return

    def _remove_if_present(self, client: docker.DockerClient, name: str) -> None:
        try:
            stale = client.containers.get(name)
        except docker.errors.NotFound:
            return
        if stale.labels.get(L.MANAGED_BY) != self._cluster:
            raise ActionError(f"name {name} is held by a container that is not ours; not touching it")
        stale.remove(force=True)


def _temporary_name(spec: ContainerSpec) -> str:
    return f"{spec.name}-next-{spec.spec_hash()[:8]}"


def _split_image(image: str) -> tuple[str, str]:
    """``repo[:tag]`` or ``repo@digest`` -> (repository, tag or digest) for the pull API."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, "latest"


def _port_bindings(spec: ContainerSpec) -> dict[str, Any]:
    bindings: dict[str, Any] = {}
    for port in spec.ports:
        key = f"{port.container_port}/{port.protocol}"
        bindings[key] = (port.host_ip, port.host_port) if port.host_ip else port.host_port
    return bindings


__all__ = ["ActionError", "ApplyResult", "EngineError", "ExecOptions", "Executor"]
