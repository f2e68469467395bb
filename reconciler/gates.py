"""Consul health gates around disruptive server actions: the decisions (pure).

HashiCorp's upgrade procedure is the bar: one server at a time, followers first and the leader
last, a graceful leave first, and each server confirmed back (alive, a voter, a leader elected,
autopilot healthy for a stabilisation time) before the next. ``reconciler.consul_gates`` asks the
agents; this module only decides from what they said.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RaftServer:
    id: str
    node: str
    address: str
    leader: bool
    voter: bool


@dataclass(frozen=True)
class ClusterView:
    """What one server agent said about the cluster (``error`` when none could be asked)."""

    leader: str = ""  # "ip:8300", "" without a leader
    servers: tuple[RaftServer, ...] = ()
    healthy: bool | None = None  # autopilot
    failure_tolerance: int | None = None
    server_health: dict[str, bool] = field(default_factory=dict)  # node -> autopilot Healthy
    serf: dict[str, str] = field(default_factory=dict)  # node -> alive | failed | left
    # server agents in the LAN gossip pool, as the agent asked lists them (agent/members): node ->
    # alive | leaving | left | failed; None when the members were not asked
    members: dict[str, str] | None = None
    peers_known: bool = False  # some server had a raft configuration (peers exist)
    error: str | None = None

    @property
    def leader_node(self) -> str | None:
        return next((s.node for s in self.servers if s.leader), None)

    def voter(self, node: str) -> bool:
        return any(s.node == node and s.voter for s in self.servers)

    @classmethod
    def from_api(
        cls,
        leader: str,
        raft: dict[str, Any] | None,
        autopilot: dict[str, Any] | None,
        members: list[dict[str, Any]] | None = None,
    ) -> ClusterView:
        servers = tuple(
            RaftServer(
                str(s.get("ID", "")),
                str(s.get("Node", "")),
                str(s.get("Address", "")),
                bool(s.get("Leader")),
                bool(s.get("Voter")),
            )
            for s in (raft or {}).get("Servers") or []
        )
        health = {str(s.get("Name")): bool(s.get("Healthy")) for s in (autopilot or {}).get("Servers") or []}
        serf = {
            str(s.get("Name")): str(s.get("SerfStatus", "")) for s in (autopilot or {}).get("Servers") or []
        }
        return cls(
            leader=leader,
            servers=servers,
            healthy=None if autopilot is None else bool(autopilot.get("Healthy")),
            failure_tolerance=None if autopilot is None else int(autopilot.get("FailureTolerance", 0)),
            server_health=health,
            serf=serf,
            members=None if members is None else server_members(members),
            peers_known=bool(servers),
        )


# Serf's member status codes as /v1/agent/members reports them (serf.MemberStatus)
MEMBER_STATUS = {0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed"}


@dataclass(frozen=True)
class GateLook:
    """One look of a health gate at the cluster while a server change waits on it (the console shows
    the last one): what it waits for, what the cluster said, and how long it has been healthy."""

    what: str  # "server n2", "the cluster without n2"
    node: str  # the server being changed
    view: ClusterView
    reason: str | None  # why it is not healthy yet; None: healthy, stabilising
    stable_for: float  # seconds healthy without a break (0 while not healthy)
    stabilization: float  # seconds it must stay healthy
    waited: float  # seconds since the gate began
    deadline: float  # seconds it may wait in all


def server_members(members: list[dict[str, Any]]) -> dict[str, str]:
    """The Consul servers among LAN members (tag role=consul), by node name, with their status."""
    return {
        str(m.get("Name")): MEMBER_STATUS.get(int(m.get("Status") or 0), "unknown")
        for m in members
        if (m.get("Tags") or {}).get("role") == "consul"
    }


def before_disruption(view: ClusterView, subject: str, desired_servers: Iterable[str]) -> str | None:
    """Why ``subject`` may not be disrupted now (None: it may). Every *other* desired server must be
    alive and a voter, a leader must exist, and autopilot must call the cluster healthy."""
    if view.error:
        return f"cannot see the cluster: {view.error}"
    if not view.leader:
        if view.peers_known:
            return (
                "the servers have no leader although peers exist: an election takes seconds; if it "
                "persists, recovery required (never re-bootstrapped)"
            )
        return "the cluster has no leader"
    problems: list[str] = []
    in_raft = {s.node for s in view.servers}
    for node in sorted((set(desired_servers) & in_raft) - {subject}):
        if view.serf.get(node, "alive" if view.voter(node) else "") != "alive":
            problems.append(f"server {node} is {view.serf.get(node) or 'not a member'}")
        elif not view.voter(node):
            problems.append(f"server {node} is not a voter yet")
    # A server the topology wants that is not in the raft configuration: one that was never started
    # (being added) holds nothing. One the gossip pool knows is either joining (not a voter yet) or on
    # its way out: a leader's leave removes it from the raft peers first, seconds before its gossip
    # says "leaving" (Consul's Server.Leave), and a leave begun by a controller that died since is
    # still running. Disrupting another server then would take two out at once.
    # A leaving server is "left" to the others well before its agent exits (it drains first), and one
    # that left and stays away is a desired server missing: both hold too; its repair, once its
    # container is down, needs no gate.
    for node in sorted(set(desired_servers) - in_raft - {subject}):
        status = (view.members or {}).get(node)
        if status == "alive":
            problems.append(f"server {node} is not in the raft peers (joining, or leaving)")
        elif status == "left":
            problems.append(f"server {node} has left the cluster (its agent may still be shutting down)")
        elif status in ("leaving", "failed"):
            problems.append(f"server {node} is {status}")
    if problems:
        return "; ".join(problems)
    if view.healthy is False:
        others = [n for n, ok in sorted(view.server_health.items()) if not ok and n != subject]
        if not others and view.server_health:
            return None  # the subject is the only unhealthy server: replacing it is the repair
        detail = f" ({unhealthy_servers(view, desired_servers, skip=subject)})" if others else ""
        return f"autopilot reports the cluster unhealthy, failure tolerance {view.failure_tolerance}{detail}"
    return None


# A server in the raft configuration that the topology does not name: an old server still running
# somewhere, or one of another cluster, that found this cluster's gossip (Serf reconnects to a member
# it lost for 72 h: reconnect_timeout). Consul's leader adds every server member of its datacenter as a
# non-voter (autopilot AddServer); one it cannot replicate to stays unhealthy, and with it the cluster,
# for good. The controller never removes a server it does not manage: it says what it is.
STRANGER_HINT = (
    "a server not in the topology is in the raft configuration (an old or foreign Consul server that "
    "joined this cluster's gossip): stop it, then 'consul operator raft remove-peer' it; consul.encrypt "
    "keeps agents without the gossip key out"
)


def unhealthy_servers(view: ClusterView, desired_servers: Iterable[str], *, skip: str = "") -> str:
    """'unhealthy: a, b (not a voter; not in the topology)', with the hint when a stranger is among them."""
    desired = set(desired_servers)
    named: list[str] = []
    stranger = False
    for node, ok in sorted(view.server_health.items()):
        if ok or node == skip:
            continue
        notes = [] if view.voter(node) else ["not a voter"]
        if desired and node not in desired:
            notes.append("not in the topology")
            stranger = True
        named.append(f"{node} ({'; '.join(notes)})" if notes else node)
    text = f"unhealthy: {', '.join(named)}"
    return f"{text}; {STRANGER_HINT}" if stranger else text


def not_healthy_yet(view: ClusterView, desired_servers: Iterable[str]) -> str:
    """Autopilot's verdict, naming the servers it holds unhealthy so that an operator sees which one
    holds the rollout."""
    unhealthy = any(not ok for ok in view.server_health.values())
    detail = f"; {unhealthy_servers(view, desired_servers)}" if unhealthy else ""
    tolerance = view.failure_tolerance
    return f"autopilot does not call the cluster healthy yet (failure tolerance {tolerance}{detail})"


def after_replacement(view: ClusterView, node: str, desired_servers: Iterable[str] = ()) -> str | None:
    """Why the replaced server ``node`` is not back yet (None: it is)."""
    if view.error:
        return f"cannot see the cluster: {view.error}"
    if not view.leader:
        return "no leader yet"
    if view.serf.get(node) not in (None, "alive"):
        return f"server {node} is {view.serf.get(node)}"
    if not view.voter(node):
        return f"server {node} is not a voter yet"
    if view.healthy is not True:
        return not_healthy_yet(view, desired_servers)
    return None


def after_removal(view: ClusterView, node: str, desired_servers: Iterable[str] = ()) -> str | None:
    """Why the cluster has not settled after ``node`` left (None: it has)."""
    if view.error:
        return f"cannot see the cluster: {view.error}"
    if not view.leader:
        return "no leader yet"
    if view.voter(node):
        return f"server {node} is still in the raft configuration"
    if view.healthy is not True:
        return not_healthy_yet(view, desired_servers)
    return None
