"""Asking the server agents (the shell around reconciler.gates)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import partial

from reconciler.consul_api import ConsulAgent, ConsulError
from reconciler.consul_settings import TLSClient
from reconciler.gates import MEMBER_STATUS, ClusterView, GateLook, after_removal, after_replacement

log = logging.getLogger("consul_reconciler.consul_gates")

INTERRUPTED = "gate interrupted"
# serf's MemberStatus, the "Status" of /v1/agent/members (hashicorp/serf serf/serf.go)


class ConsulGates:
    def __init__(
        self,
        servers: Mapping[str, str],  # node -> agent HTTP "HOST:PORT" or "https://HOST:PORT"
        *,
        deadline: float,
        stabilization: float,
        agent_timeout: float,
        leave_timeout: float = 60.0,
        token: str | None = None,
        tls: TLSClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        progress: Callable[[str], None] = lambda what: None,
        watch: Callable[[GateLook], None] = lambda look: None,
    ) -> None:
        self.servers = dict(servers)
        self.deadline = deadline
        self.stabilization = stabilization
        self.agent_timeout = agent_timeout
        self.leave_timeout = leave_timeout
        self._token = token
        self._tls = tls or TLSClient()
        self._clock = clock
        self._sleep = sleep
        self._progress = progress  # told at every look while waiting: a wait is not a wedge
        self._watch = watch  # shown every look (the console's rollout page)

    def agent(self, http: str, timeout: float = 3.0) -> ConsulAgent:
        return ConsulAgent(http, token=self._token, timeout=timeout, tls=self._tls)

    def view(self, exclude: str | None = None) -> ClusterView:
        """The cluster as the first answering server agent sees it (one with a leader preferred)."""
        errors: list[str] = []
        fallback: ClusterView | None = None
        for node, http in sorted(self.servers.items()):
            if node == exclude:
                continue
            agent = self.agent(http)
            try:
                leader = agent.leader()
            except ConsulError as exc:
                errors.append(str(exc))
                continue
            if not leader:
                fallback = fallback or ClusterView(leader="", peers_known=self._has_peers(agent))
                continue
            try:
                view = ClusterView.from_api(
                    leader, agent.raft_configuration(), agent.autopilot_health(), agent.members()
                )
            except ConsulError as exc:
                errors.append(str(exc))
                continue
            return view
        if fallback is not None:
            return fallback
        return ClusterView(error="; ".join(errors) or "no server agent is known")

    @staticmethod
    def _has_peers(agent: ConsulAgent) -> bool:
        try:
            return bool(agent.peers())
        except ConsulError:
            return False

    def leave(self, http: str) -> None:
        """Ask the agent at ``http`` to leave; Consul answers once it has (seconds, for a server)."""
        self._progress(f"waiting up to {self.leave_timeout:g}s for the agent at {http} to leave")
        try:
            self.agent(http, timeout=self.leave_timeout).leave()
        finally:
            self._progress(f"the agent at {http} answered its leave")

    def member_status(self, node: str) -> str | None:
        """``node``'s gossip status (alive, leaving, left, failed) as the first other server agent that
        lists it says; None when no other server answers or lists it."""
        for other, http in sorted(self.servers.items()):
            if other == node:
                continue
            try:
                members = self.agent(http, timeout=1.0).members()
            except ConsulError:
                continue
            for member in members:
                if member.get("Name") == node:
                    return MEMBER_STATUS.get(int(member.get("Status") or 0), "unknown")
        return None

    def others_down(self, node: str) -> list[str]:
        """Other server agents that do not answer at all (killed, host down)."""
        down: list[str] = []
        for other, http in sorted(self.servers.items()):
            if other == node:
                continue
            try:
                self.agent(http, timeout=1.0).self_info()
            except ConsulError:
                down.append(other)
        return down

    def wait(
        self,
        check: Callable[[ClusterView], str | None],
        what: str,
        node: str,
        should_stop: Callable[[], bool],
        also: Callable[[], str | None] = lambda: None,
    ) -> str | None:
        """Until ``check`` passes for the stabilisation time without a break; else the reason.
        ``also``: asked at each look that ``check`` passes; a reason breaks the window too."""
        started = self._clock()
        good_since: float | None = None
        reason: str | None = "not checked yet"
        last_break: str | None = None  # what last broke a stable window
        while self._clock() - started < self.deadline:
            view = self.view()
            reason = check(view) or also()
            now = self._clock()
            self._progress(f"waiting for {what}: {reason or 'stabilising'}")
            stable = 0.0 if reason is not None or good_since is None else now - good_since
            waited = now - started
            self._watch(GateLook(what, node, view, reason, stable, self.stabilization, waited, self.deadline))
            if reason is None:
                good_since = good_since if good_since is not None else now
                if now - good_since >= self.stabilization:
                    log.info("%s: healthy for %.1fs", what, now - good_since)
                    return None
            else:
                if good_since is not None:
                    last_break = reason
                good_since = None
                down = self.others_down(node)
                if down:
                    # Not this server's fault: another one is down. Stop waiting (no pause) so the
                    # next pass can repair it; the next disruption's gate waits for both to be healthy.
                    return f"{INTERRUPTED}: server(s) {', '.join(down)} down; repairing them first ({reason})"
            if should_stop():
                # Stopping (a signal, leadership lost) is not a failed gate: no pause; the next pass,
                # here or on another controller, looks again and every gate re-checks.
                return f"{INTERRUPTED}: stopped while waiting for {what}: {reason or 'stabilising'}"
            self._sleep(0.25)
        if reason is None:
            reason = "did not stay healthy" + (f" ({last_break})" if last_break else "")
        return f"{what} not healthy within {self.deadline:.0f}s: {reason}"

    def wait_replaced(
        self, node: str, should_stop: Callable[[], bool], restarted: Callable[[], str | None] = lambda: None
    ) -> str | None:
        """``restarted``: why the new container is not steady (the engine restarted it), or None.
        Consul alone cannot see a crash loop under a restart policy: an agent back within a few
        hundred milliseconds is never marked failed by gossip (serf's probe interval is 1 s and its
        suspicion timeout several more), so a server dying every 2 s can look alive and healthy to
        every server for a whole stabilisation window."""
        check = partial(after_replacement, node=node, desired_servers=self.servers)
        return self.wait(check, f"server {node}", node, should_stop, also=restarted)

    def wait_removed(self, node: str, should_stop: Callable[[], bool]) -> str | None:
        check = partial(after_removal, node=node, desired_servers=self.servers)
        return self.wait(check, f"the cluster without {node}", node, should_stop)

    def wait_agent(self, http: str) -> str | None:
        """Wait until the agent at ``http`` answers (before its registrator is (re)created)."""
        started = self._clock()
        last = ""
        while self._clock() - started < self.agent_timeout:
            self._progress(f"waiting for the agent at {http} to answer")
            try:
                self.agent(http).self_info()
                return None
            except ConsulError as exc:
                last = str(exc)
            self._sleep(0.2)
        return f"the agent at {http} did not answer within {self.agent_timeout:.0f}s ({last})"
