"""Consul health gates around disruptive server actions: the decisions (pure).

HashiCorp's upgrade procedure is the bar: one server at a time, followers first and the leader
last, a graceful leave first, and each server confirmed back (alive, a voter, a leader elected,
autopilot healthy for a stabilisation time) before the next. ``reconciler.rollout`` asks the
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
    peers_known: bool = False  # some server had a raft configuration (peers exist)
    error: str | None = None

    @property
    def leader_node(self) -> str | None:
        return next((s.node for s in self.servers if s.leader), None)

    def voter(self, node: str) -> bool:
        return any(s.node == node and s.voter for s in self.servers)

    @classmethod
    def from_api(
        cls, leader: str, raft: dict[str, Any] | None, autopilot: dict[str, Any] | None
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
            peers_known=bool(servers),
        )


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
    # servers the topology wants that are not in the raft configuration do not exist yet (being added)
    for node in sorted((set(desired_servers) & in_raft) - {subject}):
        if view.serf.get(node, "alive" if view.voter(node) else "") != "alive":
            problems.append(f"server {node} is {view.serf.get(node) or 'not a member'}")
        elif not view.voter(node):
            problems.append(f"server {node} is not a voter yet")
    if problems:
        return "; ".join(problems)
    if view.healthy is False:
        others = [n for n, ok in sorted(view.server_health.items()) if not ok and n != subject]
        if not others and view.server_health:
            return None  # the subject is the only unhealthy server: replacing it is the repair
        detail = f" (unhealthy: {', '.join(others)})" if others else ""
        return f"autopilot reports the cluster unhealthy, failure tolerance {view.failure_tolerance}{detail}"
    return None


def after_replacement(view: ClusterView, node: str) -> str | None:
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
        return f"autopilot does not call the cluster healthy yet (failure tolerance {view.failure_tolerance})"
    return None


def after_removal(view: ClusterView, node: str) -> str | None:
    """Why the cluster has not settled after ``node`` left (None: it has)."""
    if view.error:
        return f"cannot see the cluster: {view.error}"
    if not view.leader:
        return "no leader yet"
    if view.voter(node):
        return f"server {node} is still in the raft configuration"
    if view.healthy is not True:
        return f"autopilot does not call the cluster healthy yet (failure tolerance {view.failure_tolerance})"
    return None


def leader_last(nodes: Iterable[str], leader: str | None) -> list[str]:
    """Followers first (in the given order), the leader last."""
    ordered = list(nodes)
    return [n for n in ordered if n != leader] + [n for n in ordered if n == leader]
