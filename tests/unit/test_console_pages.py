"""The console's pure parts: what a host looks like after a pass (reconciler.console.memory) and what
the fleet and rollout pages say (reconciler.console.pages)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from desired_state.configfiles import attach
from desired_state.load import load_topology
from desired_state.spec import Endpoint
from reconciler.actual import ObservedContainer, ObservedFleet, ObservedHost
from reconciler.console.memory import HostSeen, remember
from reconciler.console.pages import HostStatus, fleet_counts, fleet_rows, plan_lines, rollout_page
from reconciler.execute import ActionResult, ApplyResult
from reconciler.gates import ClusterView, GateLook, RaftServer
from reconciler.labels import MANAGED_BY
from reconciler.one_pass import PassResult
from reconciler.plan import Action, Change, Kind, Plan

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=1)
DOC = b"""
cluster: shop
hosts:
  - {name: h1, docker: 'unix:///nonexistent/1.sock', advertise: 127.0.10.1, role: server}
  - {name: h2, docker: 'unix:///nonexistent/2.sock', advertise: 127.0.10.2, role: server}
  - {name: h3, docker: 'unix:///nonexistent/3.sock', advertise: 127.0.10.3, role: server}
  - {name: h4, docker: 'unix:///nonexistent/4.sock', advertise: 127.0.10.4, role: client}
"""


def ours(name: str, state: str = "running") -> ObservedContainer:
    return ObservedContainer(f"id-{name}", name, "consul:1", state, {MANAGED_BY: "shop"})


def host(name: str, *containers: ObservedContainer, reachable: bool = True) -> ObservedHost:
    error = None if reachable else "engine unreachable at unix:///nonexistent: No such file or directory"
    return ObservedHost(name, Endpoint(f"unix:///{name}.sock"), reachable, error, containers)


def action(kind: Kind, host: str, name: str = "consul", node: str | None = None, **change: object) -> Action:
    reasons = (Change(**change),) if change else (Change(message="container is missing"),)  # type: ignore[arg-type]
    return Action(kind, host, name, "server", node or host, reasons)


def result(
    plan: Plan, hosts: list[ObservedHost], outcomes: list[tuple[Action, str, str | None]]
) -> PassResult:
    applied = ApplyResult([ActionResult(a, status, error) for a, status, error in outcomes])
    return PassResult(plan, ObservedFleet(tuple(hosts)), 1, applied)


def test_a_host_is_shown_as_the_pass_left_it_not_as_it_found_it() -> None:
    create = action(Kind.CREATE, "h1", "registrator")
    plan = Plan("shop", (create,))
    seen = remember({}, result(plan, [host("h1", ours("consul"))], [(create, "succeeded", None)]), T0)
    assert seen["h1"].containers == {"consul": "running", "registrator": "running"}
    assert seen["h1"].drift == ()  # repaired: no drift left
    assert seen["h1"].observed_at == T0 and seen["h1"].reachable is True


def test_a_failed_or_refused_change_stays_drift_with_its_error_and_fields() -> None:
    replace = action(Kind.REPLACE, "h1", field="image", old="consul:1", new="consul:2")
    create = action(Kind.CREATE, "h2")
    plan = Plan("shop", (replace, create))
    failed = "host h2: image consul:2 is not present and pulling is off (--no-pull)"
    seen = remember(
        {}, result(plan, [host("h1", ours("consul")), host("h2")], [(create, "failed", failed)]), T0
    )
    (pending,) = seen["h1"].drift or ()
    assert (pending.symbol, pending.kind, pending.outcome) == ("~", "replace", "pending")
    assert pending.changes == ("image: 'consul:1' -> 'consul:2'",)
    (item,) = seen["h2"].drift or ()
    assert (item.symbol, item.outcome, item.error) == ("+", "failed", failed)
    refused = remember(
        {}, PassResult(plan, ObservedFleet((host("h1", ours("consul")),)), 2, None, "refused"), T0
    )
    assert [d.outcome for d in refused["h1"].drift or ()] == ["pending"]


def test_an_unreachable_host_keeps_its_last_listing_and_a_backing_off_one_is_left_alone() -> None:
    first = remember(
        {}, result(Plan("shop", ()), [host("h1", ours("consul")), host("h2", ours("consul"))], []), T0
    )
    away = Plan("shop", (), unreachable={"h1": "engine unreachable"}, deferred={"h2": "backing off"})
    later = remember(first, result(away, [host("h1", reachable=False), host("h2", reachable=False)], []), T1)
    assert later["h1"].reachable is False and later["h1"].error == "engine unreachable"
    assert later["h1"].containers == {"consul": "running"} and later["h1"].observed_at == T0  # as of then
    assert later["h1"].tried_at == T1
    assert later["h2"] == first["h2"]  # not tried: exactly as the last observation left it


def test_fleet_rows_say_unknown_for_hosts_never_or_not_now_observed_and_filters_count_them() -> None:
    loaded = attach(load_topology(DOC))
    seen = {
        "h1": HostSeen(T0, True, None, {"consul": "running"}, ()),
        "h2": HostSeen(T0, False, "engine unreachable", {"consul": "running"}, ()),
        "h3": HostSeen(T0, True, None, {}, remember({}, result(Plan("shop", (action(Kind.CREATE, "h3"),)),
                                                               [host("h3")], []), T0)["h3"].drift),
        "gone": HostSeen(T0, True, None, {"consul": "running"}, ()),
    }  # fmt: skip
    statuses = {"h2": HostStatus("unreachable", 3, T1, "engine unreachable")}
    rows = fleet_rows(loaded, seen, statuses, {})
    assert [(r.host, r.role, r.verdict, r.status.state) for r in rows] == [
        ("h1", "server", "converged", "ok"),
        ("h2", "server", "unknown", "unreachable"),
        ("h3", "server", "drift", "ok"),
        ("h4", "client", "unknown", "ok"),  # never observed: unknown, never "none"
        ("gone", None, "converged", "ok"),  # left the topology, still seen
    ]
    assert rows[0].desired == ("consul", "registrator")
    counts = fleet_counts(rows)
    wanted = {"all": 5, "drift": 1, "unknown": 2, "unreachable": 1, "converged": 2, "backoff": 0}
    assert {name: counts[name] for name in wanted} == wanted


def look(node: str, reason: str | None, stable_for: float, leader: str = "h3") -> GateLook:
    servers = tuple(RaftServer(n, n, f"{n}:8300", n == leader, n != node) for n in ("h1", "h2", "h3"))
    health = {n: n != node for n in ("h1", "h2", "h3")}
    view = ClusterView(f"{leader}:8300", servers, reason is None, 1, health, {"h1": "alive"})
    return GateLook(f"server {node}", node, view, reason, stable_for, 5.0, 12.0, 60.0)


def test_the_rollout_page_orders_followers_first_the_leader_last_and_counts_down_stabilisation() -> None:
    loaded = attach(load_topology(DOC))
    replaces = tuple(
        action(Kind.REPLACE, h, field="image", old="consul:1", new="consul:2") for h in ("h3", "h1", "h2")
    )
    plan = Plan("shop", replaces)
    waiting = rollout_page(loaded, plan, T0, True, "waiting for server h2", look("h2", None, 2.0), T1, None)
    assert [(s.node, s.state) for s in waiting.steps] == [("h1", "done"), ("h2", "changing"), ("h3", "next")]
    assert waiting.countdown == 3.0  # 5 s of stable health asked, 2 s had
    assert [(h.node, h.leader, h.voter, h.healthy) for h in waiting.health] == [
        ("h1", False, True, True), ("h2", False, False, False), ("h3", True, True, True),
    ]  # fmt: skip
    unhealthy = rollout_page(loaded, plan, T0, True, None, look("h2", "h2 is not a voter", 0.0), T1, None)
    assert unhealthy.countdown is None
    paused = ("server h2 not healthy within 60s: not a voter", "abc", T1)
    idle = rollout_page(loaded, plan, T0, False, "ignored when no pass runs", None, None, None)
    assert {s.state for s in idle.steps} == {"planned"} and idle.doing is None
    assert idle.servers == ("h1", "h2", "h3")
    held = rollout_page(loaded, plan, T0, False, None, look("h2", "h2 is not a voter", 0.0), T1, paused)
    assert [(s.node, s.state) for s in held.steps] == [("h1", "done"), ("h2", "paused"), ("h3", "held")]
    assert held.paused == paused


def test_plan_lines_carry_the_class_of_their_symbol() -> None:
    plan = Plan("shop", (action(Kind.CREATE, "h1"), action(Kind.REMOVE, "h2")), unreachable={"h3": "away"})
    lines = plan_lines(plan, 4)
    classes = {line.strip()[:1]: css for css, line in lines if line.startswith("  ") and line.strip()}
    assert classes["+"] == "create" and classes["-"] == "remove" and classes["?"] == "unknown"
    assert any(css == "change" and "container is missing" in line for css, line in lines)
