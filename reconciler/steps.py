"""How each kind of action is carried out on Docker: create (under a temporary name, renamed once its
files are in), start, adopt in place, replace (the new container made before the old one is stopped)
and remove; a server's graceful leave before it is stopped (reconciler/leave.py), and the fencing
check right before every disruptive step. The executor (reconciler/execute.py) decides what runs when.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from desired_state.spec import ContainerSpec, Endpoint
from reconciler.actual import Adoption
from reconciler.consul_gates import ConsulGates
from reconciler.containers import ActionError, ContainerOps, ExecOptions, Fenced, temporary_name
from reconciler.docker_import import Container, docker
from reconciler.engines import Connections, EngineError, describe_error
from reconciler.leave import ServerLeave
from reconciler.plan import Action, Kind
from reconciler.store import AuditLog


class Steps:
    def __init__(
        self,
        connections: Connections,
        endpoints: Mapping[str, Endpoint],
        audit: AuditLog,
        cluster: str,
        options: ExecOptions,
        gates: ConsulGates | None,
        confirm_leadership: Callable[[], str | None],
        leadership_lost: Callable[[], str | None],
        *,
        may_act: Callable[[str], str | None] = lambda host: None,
    ) -> None:
        self._connections = connections
        self._endpoints = endpoints
        self._audit = audit
        self._cluster = cluster
        self._gates = gates
        # Fencing: why this controller may no longer disrupt anything (it lost leadership), or None;
        # the first is local and cheap, the second asks Consul (before a server is disrupted). A
        # controller that is only stopping (SIGTERM) finishes the action in flight.
        self._confirm_leadership = confirm_leadership
        self._leadership_lost = leadership_lost
        self._may_act = may_act  # sharding: is the host still this controller's to act on?
        self._docker = ContainerOps(cluster, options, leadership_lost)
        self._leave = ServerLeave(gates, options.stop_timeout, self.fence) if gates is not None else None

    def _client(self, host: str) -> docker.DockerClient:
        return self._connections.get(host, self._endpoints[host])

    def restarts(self, host: str, container_id: str) -> int:
        """How many times the engine has restarted the container (its restart policy), from its
        ``RestartCount``; EngineError when the engine cannot say."""
        client = self._client(host)
        try:
            attrs = client.api.inspect_container(container_id)
        except Exception as exc:
            raise EngineError(host, f"container {container_id[:12]}: {describe_error(exc)}") from exc
        return int(attrs.get("RestartCount") or 0)

    def perform(self, action: Action) -> str | None:
        """The container's id once the action is done; ActionError (or Fenced) when it is not."""
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
            self.fence(action, "stopping")
            self._docker.stop_and_remove(client, action.observed.id, action)
            return action.observed.id
        raise ActionError(f"host {action.host}: {action.kind.value} is not an action the executor performs")

    def _replace(self, client: docker.DockerClient, action: Action, spec: ContainerSpec, old_id: str) -> str:
        temporary = temporary_name(spec)
        self._docker.remove_if_present(client, temporary)  # a leftover of an interrupted replacement
        new = self._create(client, spec, temporary)
        try:
            self._leave_if_server(client, action, old_id)
            self.fence(action, "stopping the old container")
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

    def fence(self, action: Action, step: str, *, server: bool = False) -> None:
        """Right before a disruptive step: may this controller still act? For a server, Consul itself
        must confirm that the lock key still names this controller's session."""
        why = self._leadership_lost() or self._may_act(action.host)
        if why is None and server:
            why = self._confirm_leadership()
        if why is not None:
            what = f"{action.kind.value} of {action.name}"
            raise Fenced(f"host {action.host}: {what} stopped before {step}: {why}")
