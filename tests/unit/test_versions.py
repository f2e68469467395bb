"""Consul versions in a rollout (reconciler.versions): read from tags; servers before clients, no
server downgrade unless allowed, a warning past Consul's documented step (no Docker)."""

from __future__ import annotations

from typing import Any

import pytest

from desired_state.spec import DesiredFleet
from reconciler.actual import ObservedFleet
from reconciler.execute import ActionResult, Executor
from reconciler.formatting import format_plan
from reconciler.gates import ClusterView
from reconciler.plan import Action, Plan, make_plan
from reconciler.versions import Version, check_versions, client_wait, image_version
from tests.unit.test_plan import desired, ours, seen


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("hashicorp/consul:1.20", Version(1, 20, 0)),
        ("hashicorp/consul:1.14.11", Version(1, 14, 11)),
        ("registry.local:5000/consul:v1.16.1-ent", Version(1, 16, 1)),
        ("consul-reconciler-built/consul:1.14.11-a", Version(1, 14, 11)),
        ("hashicorp/consul:1.20@sha256:" + "a" * 64, Version(1, 20, 0)),
        ("hashicorp/consul:latest", None),
        ("hashicorp/consul", None),
        ("registry.local:5000/consul", None),
        ("hashicorp/consul@sha256:" + "a" * 64, None),
    ],
)
def test_a_version_is_read_from_the_tag_or_not_at_all(image: str, version: Version | None) -> None:
    assert image_version(image) == version


def fleets(old: str, new: str, *, clients_too: bool = True) -> tuple[DesiredFleet, ObservedFleet]:
    """The fleet at ``new``, observed running ``old`` everywhere."""
    before = desired(consul={"image": f"hashicorp/consul:{old}"})
    after = desired(consul={"image": f"hashicorp/consul:{new}"})
    observed = ObservedFleet(
        tuple(
            seen(n, [ours(s) for s in (o if clients_too or n.name.startswith("server") else n).specs])
            for o, n in zip(before.hosts, after.hosts, strict=True)
        )
    )
    return after, observed


def test_a_server_downgrade_is_refused_unless_allowed() -> None:
    plan = check_versions(make_plan(*fleets("1.20", "1.19")), allow_downgrade=False)
    assert plan.refused == (
        "server downgrade refused (server1 1.20.0 -> 1.19.0, server2 1.20.0 -> 1.19.0, server3 1.20.0 -> "
        "1.19.0): a server may not read the state a newer version wrote; set rollout.allow_downgrade: "
        "true if this is intended"
    )
    assert "REFUSED: server downgrade refused" in format_plan(plan)
    allowed = check_versions(make_plan(*fleets("1.20", "1.19")), allow_downgrade=True)
    assert allowed.refused is None and len(allowed.changes) == 5


@pytest.mark.parametrize(
    ("old", "new", "warned"),
    [("1.18", "1.20", False), ("1.18.3", "1.20.1", False), ("1.17", "1.20", True), ("1.20", "2.0", True)],
)
def test_a_jump_past_two_major_versions_is_a_warning(old: str, new: str, warned: bool) -> None:
    plan = check_versions(make_plan(*fleets(old, new)), allow_downgrade=False)
    assert plan.refused is None
    assert bool(plan.warnings) is warned
    if warned:
        assert len(plan.warnings) == 3 and plan.warnings[0].startswith("server1: Consul ")
        assert "jumps more than 2 major versions at once" in plan.warnings[0]
        assert f"WARNING: {plan.warnings[0]}" in format_plan(plan)
        assert plan.to_dict()["warnings"] == list(plan.warnings)


def test_a_client_waits_while_a_server_runs_an_older_version() -> None:
    plan = make_plan(*fleets("1.19", "1.20"))
    client = next(a for a in plan.actions if a.role == "client")
    old, new = Version(1, 19, 0), Version(1, 20, 0)
    assert client_wait(client, {"server1": new, "server2": old, "server3": None}) == (
        "the client would run Consul 1.20.0 while server(s) server2 (1.19.0) run an older "
        "version; clients go once every server runs it or newer"
    )
    assert client_wait(client, {"server1": new, "server2": Version(1, 21, 0), "server3": None}) is None
    server = next(a for a in plan.actions if a.role == "server")
    assert client_wait(server, {"server1": old}) is None  # only clients wait on servers


class Servers(Executor):
    """Carries out nothing: the server actions end as ``server_status`` says; waits are collected."""

    server_status = "succeeded"

    def _run_one(self, action: Action) -> ActionResult:
        return ActionResult(action, "succeeded")

    def _run_server(self, action: Action) -> ActionResult:
        return ActionResult(action, self.server_status)

    def _record_wait(self, action: Action, why: str, prefix: str = "") -> ActionResult:
        return ActionResult(action, "waiting", why)


class NoLeader:
    def view(self, exclude: str | None = None) -> ClusterView:
        return ClusterView()


def apply(plan: Plan, server_status: str) -> dict[str, str]:
    none: Any = None
    gates: Any = NoLeader()
    running = {f"server{i}": Version(1, 19, 0) for i in (1, 2, 3)}
    executor = Servers(none, {}, none, 1, "shop", gates=gates, server_versions=running)
    executor.server_status = server_status
    return {f"{r.action.host}/{r.action.name}": r.status for r in executor.apply(plan).results}


def test_clients_go_in_the_same_pass_once_every_server_was_upgraded() -> None:
    results = apply(make_plan(*fleets("1.19", "1.20")), "succeeded")
    assert results == {
        f"{h}/consul": "succeeded" for h in ("server1", "server2", "server3", "client1", "client2")
    }


def test_clients_wait_when_a_server_could_not_be_upgraded() -> None:
    results = apply(make_plan(*fleets("1.19", "1.20")), "waiting")
    assert results["client1/consul"] == results["client2/consul"] == "waiting"


def test_clients_at_the_servers_version_do_not_wait() -> None:
    """Servers already at 1.20 (observed), the clients still at 1.19: they go."""
    plan = make_plan(*fleets("1.19", "1.20", clients_too=True))
    clients_only = Plan(plan.cluster, tuple(a for a in plan.actions if a.role == "client"))
    none: Any = None
    executor = Servers(none, {}, none, 1, "shop", server_versions={"server1": Version(1, 20, 0)})
    assert {r.status for r in executor.apply(clients_only).results} == {"succeeded"}
