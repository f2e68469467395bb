"""What each console page shows, from what the controller knows (pure: no Docker, no database, no
HTTP). The templates only lay these out."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from desired_state.load import Loaded
from reconciler.console.memory import DriftItem, HostSeen
from reconciler.formatting import docker_run_line, format_plan
from reconciler.gates import ClusterView, GateLook
from reconciler.plan import Plan
from reconciler.store import ActionRow, DocumentRow

# the fleet page's filters: what a row must be to be shown
FILTERS = ("all", "drift", "converged", "unknown", "unreachable", "backoff", "degraded")


@dataclass(frozen=True)
class HostStatus:
    """The controller's word on a host after its last pass (reconciler.backoff.HostBackoff, in wall
    time): ok, backoff, degraded or unreachable; failures, next retry, last error."""

    state: str = "ok"
    failures: int = 0
    retry_at: datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class FleetRow:
    host: str
    role: str | None  # None: no longer in the topology
    desired: tuple[str, ...]
    seen: HostSeen
    status: HostStatus
    last_action: ActionRow | None
    owner: str | None = None  # sharded controllers (run --shard): the controller that owns the host

    @property
    def drift(self) -> tuple[DriftItem, ...] | None:
        return self.seen.drift

    @property
    def verdict(self) -> str:
        """converged, drift or unknown: what can be said of the host from its last observation."""
        if self.seen.drift is None or self.seen.reachable is False:
            return "unknown"
        return "drift" if self.seen.drift else "converged"

    def shown_by(self, wanted: str) -> bool:
        return wanted == "all" or wanted in (self.verdict, self.status.state)


def fleet_rows(
    loaded: Loaded | None,
    seen: Mapping[str, HostSeen],
    statuses: Mapping[str, HostStatus],
    last_actions: Mapping[str, ActionRow],
    owners: Mapping[str, str | None] | None = None,
) -> list[FleetRow]:
    """One row per host of the topology in force, then the hosts that left it but were seen; ``owners``:
    each host's controller, when several share the fleet (None: this one is the only one)."""
    owners = owners or {}
    rows: list[FleetRow] = []
    wanted = [] if loaded is None else list(loaded.topology.hosts)
    for host in wanted:
        spec = loaded.fleet.host(host.name) if loaded is not None else None
        rows.append(
            FleetRow(
                host.name,
                host.role.value,
                tuple(s.name for s in spec.specs) if spec else (),
                seen.get(host.name, HostSeen(None, None)),
                statuses.get(host.name, HostStatus()),
                last_actions.get(host.name),
                owners.get(host.name),
            )
        )
    known = {h.name for h in wanted}
    for name in sorted(set(seen) - known):
        rows.append(
            FleetRow(
                name,
                None,
                (),
                seen[name],
                statuses.get(name, HostStatus()),
                last_actions.get(name),
                owners.get(name),
            )
        )
    return rows


def fleet_counts(rows: Sequence[FleetRow]) -> dict[str, int]:
    """How many rows each filter shows."""
    return {name: sum(1 for r in rows if r.shown_by(name)) for name in FILTERS}


@dataclass(frozen=True)
class HostPage:
    row: FleetRow
    run_lines: tuple[tuple[str, str], ...]  # container -> its `docker run` line (secrets redacted)
    history: tuple[ActionRow, ...]


def host_page(row: FleetRow, loaded: Loaded | None, history: Sequence[ActionRow]) -> HostPage:
    spec = loaded.fleet.host(row.host) if loaded is not None else None
    lines = tuple((s.name, docker_run_line(s)) for s in spec.specs) if spec else ()
    return HostPage(row, lines, tuple(history))


# --- the server rollout --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerStep:
    node: str
    host: str
    change: str  # "replace", "remove", "adopt by replacement"
    state: str  # done, changing, next


@dataclass(frozen=True)
class ServerHealth:
    node: str
    voter: bool
    healthy: bool | None  # autopilot's word; None when it did not list the server
    serf: str  # alive, leaving, left, failed; "" when not known
    leader: bool


@dataclass(frozen=True)
class RolloutPage:
    servers: tuple[str, ...]  # the topology's server nodes
    steps: tuple[ServerStep, ...]  # the server changes of the plan, in the order a rollout takes them
    in_pass: bool
    doing: str | None  # what the pass in progress waits on now (the controller's own words)
    look: GateLook | None
    look_at: datetime | None
    health: tuple[ServerHealth, ...]
    countdown: float | None  # seconds of stable health still needed; None while not healthy
    paused: tuple[str, str | None, datetime] | None  # reason, digest, since
    plan_at: datetime | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def rollout_page(
    loaded: Loaded | None,
    plan: Plan | None,
    plan_at: datetime | None,
    in_pass: bool,
    doing: str | None,
    look: GateLook | None,
    look_at: datetime | None,
    paused: tuple[str, str | None, datetime] | None,
) -> RolloutPage:
    servers = tuple(h.node_name for h in loaded.topology.servers) if loaded is not None else ()
    leader = look.view.leader_node if look is not None else None
    ordered = [a for phase in (plan.phases() if plan else ()) for a in phase.rollout(leader)]
    changing = look.node if look is not None and in_pass else None
    index = next((i for i, a in enumerate(ordered) if a.node == changing), None)
    steps = tuple(
        ServerStep(
            a.node or a.name,
            a.host,
            {"adopt": "adopt by replacement"}.get(a.kind.value, a.kind.value),
            "next" if index is None or i > index else "changing" if i == index else "done",
        )
        for i, a in enumerate(ordered)
    )
    if not in_pass:  # between passes: where a paused rollout stopped, else the last plan's order
        stopped = look.node if look is not None and paused is not None else None
        at = next((i for i, s in enumerate(steps) if s.node == stopped), None)
        steps = tuple(ServerStep(s.node, s.host, s.change, _between(i, at)) for i, s in enumerate(steps))
    health = _health(look.view) if look is not None else ()
    countdown = None
    if look is not None and look.reason is None:
        countdown = max(0.0, look.stabilization - look.stable_for)
    notes: list[str] = []
    if paused is not None:
        notes.append(f"paused: {paused[0]}")
    return RolloutPage(
        servers,
        steps,
        in_pass,
        doing if in_pass else None,
        look,
        look_at,
        health,
        countdown,
        paused,
        plan_at,
        tuple(notes),
    )


def _between(index: int, paused_at: int | None) -> str:
    if paused_at is None:
        return "planned"
    return "done" if index < paused_at else "paused" if index == paused_at else "held"


def _health(view: ClusterView) -> tuple[ServerHealth, ...]:
    nodes = sorted({s.node for s in view.servers} | set(view.server_health) | set(view.serf))
    voters = {s.node for s in view.servers if s.voter}
    leader = view.leader_node
    return tuple(
        ServerHealth(n, n in voters, view.server_health.get(n), view.serf.get(n, ""), n == leader)
        for n in nodes
    )


# --- the plan --------------------------------------------------------------------------------------------

PLAN_CLASSES = {
    "+": "create",
    "~": "replace",
    ">": "start",
    "-": "remove",
    "!": "blocked",
    "=": "adopt",
    "?": "unknown",
}


def plan_lines(plan: Plan, hosts: int | None) -> list[tuple[str, str]]:
    """`plan`'s text, line by line, each with the class of its symbol (the CLI's colours)."""
    lines: list[tuple[str, str]] = []
    for line in format_plan(plan, hosts).split("\n"):
        head = line.strip()[:1]
        css = PLAN_CLASSES.get(head, "") if line.startswith("  ") and not line.startswith("      ") else ""
        if line.startswith(("REFUSED", "WARNING")):
            css = "blocked"
        elif line.startswith("      "):
            css = "change"
        lines.append((css, line))
    return lines


# --- the desired state ----------------------------------------------------------------------------------


def diff_lines(a: DocumentRow, b: DocumentRow) -> list[tuple[str, str]]:
    """The unified diff from ``a`` to ``b``, each line with its class (add, del, hunk, head)."""
    out: list[tuple[str, str]] = []
    for line in difflib.unified_diff(
        a.document.splitlines(),
        b.document.splitlines(),
        fromfile=f"#{a.id} {a.digest[:12]}",
        tofile=f"#{b.id} {b.digest[:12]}",
        lineterm="",
    ):
        css = (
            "head"
            if line.startswith(("---", "+++"))
            else "hunk"
            if line.startswith("@@")
            else "add"
            if line.startswith("+")
            else "del"
            if line.startswith("-")
            else ""
        )
        out.append((css, line))
    return out
