"""A server's graceful leave before its container is stopped: the one place that decides whether a
server that may still be a voter can be stopped (it left, seen by its peers or by its exit) or not."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from reconciler.consul_api import ConsulError, ConsulUnreachable
from reconciler.consul_gates import ConsulGates
from reconciler.containers import ActionError
from reconciler.docker_import import Container, docker
from reconciler.plan import Action

log = logging.getLogger("consul_reconciler.execute")
# How long a server seen "left" after a leave call that did not answer gets to exit by itself: Consul's
# leave_drain_time (5 s) plus raftRemoveGracePeriod (5 s), with a margin (agent/consul/server.go, Leave)
LEAVE_EXIT_GRACE = 15.0


class ServerLeave:
    """``fence(action, step, server=True)`` raises when this controller may no longer act."""

    def __init__(self, gates: ConsulGates, stop_timeout: int, fence: Callable[..., None]) -> None:
        self.gates = gates
        self.stop_timeout = stop_timeout
        self.fence = fence

    def before_stop(self, client: docker.DockerClient, action: Action, container_id: str) -> None:
        """Never stop a server that may still be a voter without a graceful leave: its restart policy is
        set to "no" (so Docker does not bring it back), the agent is asked to leave, and we wait for it
        to exit. A server that is not running any more has nothing to leave.

        Consul answers the leave only once the agent has left, seconds later for a server. When the call
        fails (a timeout, or the connection closed by the exiting agent), what is observed decides: the
        other servers see the member ``left``, or its container exited, and it has left; otherwise the
        leave failed, the restart policy is put back as it was and nothing is stopped."""
        if not action.observed or not action.observed.is_consul_server:
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
        self.fence(action, f"the leave of server {action.node}", server=True)
        policy = dict(container.attrs.get("HostConfig", {}).get("RestartPolicy") or {"Name": "no"})
        container.update(restart_policy={"Name": "no"})
        try:
            self.gates.leave(http)
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
            exit_within = max(self.stop_timeout, LEAVE_EXIT_GRACE)
        else:
            exit_within = self.stop_timeout
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
        deadline = time.monotonic() + (self.stop_timeout if patient else 0.0)
        while True:
            container.reload()
            if container.status != "running":
                return f"its container is not running ({container.status})"
            status = self.gates.member_status(action.node or "")
            if status == "left":
                return "the other servers see it left"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)
