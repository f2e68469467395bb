"""reconciler.plan: DesiredFleet x ObservedFleet -> ordered actions with reasons (pure, no Docker).

Observed state is plain data: a converged container is an ObservedContainer whose labels are
``labels_for(cluster, spec)`` of the very spec the topology renders.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import replace
from itertools import groupby
from typing import Any

import pytest

from desired_state.handrun import FoundContainer
from desired_state.load import load_topology
from desired_state.render import render
from desired_state.spec import ContainerSpec, DesiredFleet, DesiredHost, Endpoint
from reconciler import labels as L
from reconciler.actual import Adoption, ObservedContainer, ObservedFleet, ObservedHost
from reconciler.execute import action_record
from reconciler.labels import labels_for
from reconciler.plan import (
    ROLE_ORDER,
    Action,
    Change,
    Kind,
    Plan,
    disrupts_server,
    is_down,
    make_plan,
    phase_key,
)
from reconciler.store import ActionRecord

CLUSTER = "shop"
THREE_SERVERS = (("server1", "10.0.0.1"), ("server2", "10.0.0.2"), ("server3", "10.0.0.3"))


def host(name: str, ip: str, role: str = "server", **extra: Any) -> dict[str, Any]:
    return {"name": name, "docker": f"ssh://admin@{ip}", "advertise": ip, "role": role, **extra}


def desired(hosts: list[dict[str, Any]] | None = None, **top: Any) -> DesiredFleet:
    if hosts is None:
        hosts = [host("server1", "10.0.0.1"), host("server2", "10.0.0.2"), host("server3", "10.0.0.3")]
        hosts += [host("client1", "10.0.1.1", "client"), host("client2", "10.0.1.2", "client")]
    data = {"cluster": CLUSTER, **top, "hosts": hosts}
    return render(load_topology(json.dumps(data).encode()).topology)


def container_id(host_name: str, name: str, salt: str = "") -> str:
    return hashlib.sha256(f"{host_name}/{name}/{salt}".encode()).hexdigest()


def ours(spec: ContainerSpec, state: str = "running", cluster: str = CLUSTER) -> ObservedContainer:
    """A container made by the controller from ``spec``."""
    return ObservedContainer(
        id=container_id(spec.host, spec.name), name=spec.name, image=spec.image, state=state,
        labels=labels_for(cluster, spec),
    )  # fmt: skip


def unmanaged(
    host_name: str, name: str, image: str = "consul:1.4", state: str = "running"
) -> ObservedContainer:
    return ObservedContainer(id=container_id(host_name, name, "hand"), name=name, image=image, state=state)


def seen(
    dhost: DesiredHost,
    managed: Iterable[ObservedContainer] = (),
    others: Iterable[ObservedContainer] = (),
) -> ObservedHost:
    return ObservedHost(
        dhost.name, dhost.endpoint, reachable=True, managed=tuple(managed), others=tuple(others)
    )


def empty(fleet: DesiredFleet) -> ObservedFleet:
    return ObservedFleet(tuple(seen(h) for h in fleet.hosts))


def converged(fleet: DesiredFleet, state: str = "running") -> ObservedFleet:
    return ObservedFleet(tuple(seen(h, [ours(s, state) for s in h.specs]) for h in fleet.hosts))


def with_host(observed: ObservedFleet, new: ObservedHost) -> ObservedFleet:
    return ObservedFleet(tuple(new if h.name == new.name else h for h in observed.hosts))


def summary(plan: Plan) -> list[tuple[str, str, str]]:
    return [(a.kind.value, a.host, a.name) for a in plan.actions]


def spec_of(fleet: DesiredFleet, host_name: str, name: str = "consul") -> ContainerSpec:
    dhost = fleet.host(host_name)
    assert dhost is not None
    return next(s for s in dhost.specs if s.name == name)


# --- creating -------------------------------------------------------------------------------------


def test_empty_hosts_get_everything_created_servers_then_clients_then_registrators() -> None:
    # topology order deliberately not alphabetical, and a client first
    fleet = desired([host("web", "10.0.1.1", "client"), host("db", "10.0.0.2"), host("api", "10.0.0.3")])
    plan = make_plan(fleet, empty(fleet))
    assert summary(plan) == [
        ("create", "db", "consul"),
        ("create", "api", "consul"),
        ("create", "web", "consul"),
        ("create", "web", "registrator"),
        ("create", "db", "registrator"),
        ("create", "api", "registrator"),
    ]
    assert [a.role for a in plan.actions] == ["server", "server", "client"] + ["registrator"] * 3
    for action in plan.actions:
        assert action.reasons == (Change(message="container is missing"),)
        assert action.desired is not None and action.desired.host == action.host
        assert action.observed is None
        assert not action.disruptive
        assert action.old_hash is None and action.new_hash == action.desired.spec_hash()
    assert plan.counts()["create"] == 6
    assert not plan.is_noop
    assert plan.unreachable == {} and plan.retired_hosts == () and plan.refused is None


def test_on_each_host_the_agent_comes_before_its_registrator() -> None:
    fleet = desired()
    plan = make_plan(fleet, empty(fleet))
    position = {(a.host, a.name): i for i, a in enumerate(plan.actions)}
    for dhost in fleet.hosts:
        assert position[(dhost.name, "consul")] < position[(dhost.name, "registrator")]


def test_only_the_missing_container_is_created() -> None:
    fleet = desired()
    server2 = fleet.host("server2")
    assert server2 is not None
    observed = with_host(converged(fleet), seen(server2, [ours(spec_of(fleet, "server2", "registrator"))]))
    assert summary(make_plan(fleet, observed)) == [("create", "server2", "consul")]


# --- converged ------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["running", "restarting"])
def test_converged_fleet_needs_nothing(state: str) -> None:
    fleet = desired()
    plan = make_plan(fleet, converged(fleet, state))
    assert plan.actions == ()
    assert plan.is_noop
    assert plan.changes == ()
    assert set(plan.counts().values()) == {0}


def test_growing_servers_only_creates_the_new_ones() -> None:
    three = desired()
    five = desired(
        [host(f"server{i}", f"10.0.0.{i}") for i in range(1, 6)]
        + [host("client1", "10.0.1.1", "client"), host("client2", "10.0.1.2", "client")]
    )
    observed = ObservedFleet(
        (*converged(three).hosts, *(seen(h) for h in five.hosts if h.name in ("server4", "server5")))
    )
    plan = make_plan(five, observed)
    assert summary(plan) == [
        ("create", "server4", "consul"),
        ("create", "server5", "consul"),
        ("create", "server4", "registrator"),
        ("create", "server5", "registrator"),
    ]


# --- drift ----------------------------------------------------------------------------------------


def test_image_change_on_clients_replaces_only_the_clients_naming_the_field() -> None:
    old_fleet = desired(consul={"image": "hashicorp/consul:1.19"})
    new_fleet = desired(consul={"image": "hashicorp/consul:1.20"})
    # servers already upgraded (and registrators never changed); the clients still run 1.19
    observed = ObservedFleet(
        tuple(
            seen(new, [ours(s) for s in (old if new.name.startswith("client") else new).specs])
            for old, new in zip(old_fleet.hosts, new_fleet.hosts, strict=True)
        )
    )
    plan = make_plan(new_fleet, observed)
    assert summary(plan) == [("replace", "client1", "consul"), ("replace", "client2", "consul")]
    for action in plan.actions:
        assert action.role == "client"
        assert action.reasons == (
            Change(field="image", old="hashicorp/consul:1.19", new="hashicorp/consul:1.20"),
        )
        assert action.disruptive
        assert action.old_hash != action.new_hash
        assert action.observed is not None and action.old_hash == action.observed.spec_hash
        assert action.image == "hashicorp/consul:1.20"


def test_every_changed_field_is_named_with_old_and_new() -> None:
    before = desired([host("server1", "10.0.0.1")])
    after = desired(
        [host("server1", "10.0.0.1", data_dir="/srv/consul", network="bridge")], consul={"ui": False}
    )
    plan = make_plan(after, converged(before))
    assert summary(plan) == [("replace", "server1", "consul")]
    reasons = {r.field: r for r in plan.actions[0].reasons}
    assert set(reasons) == {"command", "mounts", "network_mode", "ports"}
    assert reasons["mounts"].old == ["/var/lib/consul-reconciler/data:/consul/data"]
    assert reasons["mounts"].new == ["/srv/consul:/consul/data"]
    assert (reasons["network_mode"].old, reasons["network_mode"].new) == ("host", "bridge")
    assert "-ui" in reasons["command"].old and "-ui" not in reasons["command"].new
    assert reasons["ports"].old == [] and "8301:8301/udp" in reasons["ports"].new
    assert str(reasons["network_mode"]) == "network_mode: 'host' -> 'bridge'"


@pytest.mark.parametrize("state", ["exited", "created", "paused"])
def test_a_stopped_managed_container_is_started(state: str) -> None:
    fleet = desired()
    client1 = fleet.host("client1")
    assert client1 is not None
    stopped = [ours(spec_of(fleet, "client1"), state), ours(spec_of(fleet, "client1", "registrator"))]
    plan = make_plan(fleet, with_host(converged(fleet), seen(client1, stopped)))
    assert summary(plan) == [("start", "client1", "consul")]
    assert plan.actions[0].reasons == (Change(message=f"container is {state}"),)
    assert not plan.actions[0].disruptive


def test_a_dead_managed_container_is_replaced() -> None:
    fleet = desired()
    server3 = fleet.host("server3")
    assert server3 is not None
    dead = [ours(spec_of(fleet, "server3"), "dead"), ours(spec_of(fleet, "server3", "registrator"))]
    plan = make_plan(fleet, with_host(converged(fleet), seen(server3, dead)))
    assert summary(plan) == [("replace", "server3", "consul")]
    assert plan.actions[0].reasons == (Change(message="container is dead"),)
    assert plan.actions[0].disruptive


def test_a_container_docker_is_already_removing_is_left_alone() -> None:
    fleet = desired()
    server3 = fleet.host("server3")
    assert server3 is not None
    going = [ours(spec_of(fleet, "server3"), "removing"), ours(spec_of(fleet, "server3", "registrator"))]
    assert make_plan(fleet, with_host(converged(fleet), seen(server3, going))).actions == ()


def test_a_stale_hash_version_is_replaced_even_with_equal_fields() -> None:
    fleet = desired([host("server1", "10.0.0.1")])
    spec = spec_of(fleet, "server1")
    old = ours(spec)
    old = replace(old, labels={**old.labels, L.HASH_VERSION_LABEL: "0"})
    plan = make_plan(
        fleet, ObservedFleet((seen(fleet.hosts[0], [old, ours(spec_of(fleet, "server1", "registrator"))]),))
    )
    assert summary(plan) == [("replace", "server1", "consul")]
    assert plan.actions[0].reasons == (Change(message="spec hash version changed; fields are equal"),)


def test_a_container_without_a_readable_spec_label_is_replaced_with_a_plain_reason() -> None:
    fleet = desired([host("server1", "10.0.0.1")])
    old = ours(spec_of(fleet, "server1"))
    labels = {k: v for k, v in old.labels.items() if k != L.SPEC}
    labels[L.SPEC_HASH] = "0" * 16
    observed = ObservedFleet(
        (seen(fleet.hosts[0], [replace(old, labels=labels), ours(spec_of(fleet, "server1", "registrator"))]),)
    )
    plan = make_plan(fleet, observed)
    assert summary(plan) == [("replace", "server1", "consul")]
    assert "carries no readable spec label" in (plan.actions[0].reasons[0].message or "")


# --- removing -------------------------------------------------------------------------------------


def test_a_managed_container_no_longer_desired_is_removed() -> None:
    before = desired()
    hosts = [host("server1", "10.0.0.1"), host("server2", "10.0.0.2"), host("server3", "10.0.0.3")]
    hosts += [host("client1", "10.0.1.1", "client", registrator=False), host("client2", "10.0.1.2", "client")]
    after = desired(hosts)
    plan = make_plan(after, converged(before))
    assert summary(plan) == [("remove", "client1", "registrator")]
    action = plan.actions[0]
    assert action.reasons == (Change(message="no longer desired on this host"),)
    assert action.desired is None and action.observed is not None
    assert action.role == "registrator" and action.node == "client1"
    assert action.disruptive
    assert action.new_hash is None and action.old_hash == action.observed.spec_hash
    assert plan.retired_hosts == ()


def test_a_retired_host_has_its_containers_removed_registrator_first() -> None:
    before = desired()
    after = desired([host("server1", "10.0.0.1"), host("server2", "10.0.0.2"), host("server3", "10.0.0.3")])
    # client1 and client2 left the topology; client2 also runs someone else's labelled container
    foreign = ours(spec_of(before, "client2"), cluster="other")
    foreign = replace(foreign, name="other-consul", id=container_id("client2", "other-consul"))
    observed = converged(before)
    client2 = before.host("client2")
    assert client2 is not None
    observed = with_host(observed, seen(client2, [*(ours(s) for s in client2.specs), foreign]))
    plan = make_plan(after, observed)
    assert summary(plan) == [
        ("remove", "client1", "registrator"),
        ("remove", "client2", "registrator"),
        ("remove", "client1", "consul"),
        ("remove", "client2", "consul"),
    ]
    assert all(a.reasons == (Change(message="host is no longer in the topology"),) for a in plan.actions)
    assert plan.retired_hosts == ("client1", "client2")
    assert plan.refused is None


def test_a_retired_host_is_forgotten_only_when_all_its_actions_succeeded() -> None:
    before = desired()
    after = desired([host("server1", "10.0.0.1"), host("server2", "10.0.0.2"), host("server3", "10.0.0.3")])
    plan = make_plan(after, converged(before))
    assert plan.retired_hosts == ("client1", "client2")
    assert plan.hosts_to_forget([]) == ("client1", "client2")
    assert plan.hosts_to_forget(["client2", "server1"]) == ("client1",)  # client2 is looked at again


def test_secrets_are_needed_only_when_a_container_is_made_from_a_spec_that_has_them() -> None:
    key = {"encrypt": {"env": "GOSSIP"}}
    with_key = desired(consul=key)
    assert make_plan(with_key, empty(with_key)).needs_secrets  # created
    assert not make_plan(with_key, converged(with_key)).needs_secrets  # nothing made
    plain = desired()
    assert not make_plan(plain, empty(plain)).needs_secrets  # made, but no secret in the spec
    assert make_plan(with_key, converged(plain)).needs_secrets  # replaced to get the key


def test_a_departed_host_with_only_foreign_containers_is_not_retired() -> None:
    fleet = desired([host("server1", "10.0.0.1")])
    other = desired([host("elsewhere", "10.0.5.5")])
    foreign = [ours(s, cluster="other") for s in other.hosts[0].specs]
    observed = ObservedFleet((*converged(fleet).hosts, seen(other.hosts[0], foreign)))
    plan = make_plan(fleet, observed)
    assert plan.actions == () and plan.retired_hosts == () and plan.is_noop


def test_removals_come_after_every_other_action() -> None:
    before = desired()
    after = desired([*(host(n, ip) for n, ip in THREE_SERVERS), host("client9", "10.0.1.9", "client")])
    observed = ObservedFleet((*converged(before).hosts, seen(after.hosts[3])))
    kinds = [a.kind for a in make_plan(after, observed).actions]
    assert kinds == [Kind.CREATE, Kind.CREATE] + [Kind.REMOVE] * 4


@pytest.mark.parametrize(("limit", "refused"), [(3, True), (4, False), (10, False)])
def test_more_removals_than_the_limit_refuses_the_pass(limit: int, refused: bool) -> None:
    before = desired()
    after = desired([host("server1", "10.0.0.1"), host("server2", "10.0.0.2"), host("server3", "10.0.0.3")])
    plan = make_plan(after, converged(before), max_removals=limit)
    assert plan.counts()["remove"] == 4
    if refused:
        assert plan.refused == (
            f"this pass would remove 4 containers, more than the limit of {limit}; "
            "check the topology, then raise --max-removals if this is intended"
        )
        assert not plan.is_noop
    else:
        assert plan.refused is None


def test_replacements_do_not_count_as_removals() -> None:
    before = desired(consul={"image": "hashicorp/consul:1.19"})
    after = desired(consul={"image": "hashicorp/consul:1.20"})
    plan = make_plan(after, converged(before), max_removals=0)
    assert plan.counts()["replace"] == 5
    assert plan.refused is None


def test_a_fleet_with_no_hosts_is_refused() -> None:
    nothing = DesiredFleet(CLUSTER, "dc1", ())
    plan = make_plan(nothing, converged(desired()))
    assert plan.actions == ()
    assert plan.refused == "the topology has no hosts; refusing to plan a pass"


# --- ownership ------------------------------------------------------------------------------------


def test_containers_of_another_cluster_are_ignored() -> None:
    fleet = desired([host("server1", "10.0.0.1")])
    elsewhere = desired([host("x", "10.9.9.9")], cluster="other")
    foreign = [
        replace(ours(s, cluster="other"), name=f"other-{s.name}", id=container_id("o", s.name))
        for s in elsewhere.hosts[0].specs
    ]
    observed = ObservedFleet((seen(fleet.hosts[0], [*(ours(s) for s in fleet.hosts[0].specs), *foreign]),))
    assert make_plan(fleet, observed).is_noop


def test_a_name_held_by_another_cluster_is_blocked_even_with_adopt() -> None:
    fleet = desired([host("server1", "10.0.0.1")])
    theirs = ours(spec_of(fleet, "server1"), cluster="other")
    observed = ObservedFleet(
        (seen(fleet.hosts[0], [theirs, ours(spec_of(fleet, "server1", "registrator"))]),)
    )
    for adopt in ((), ("server1/consul",)):
        plan = make_plan(fleet, observed, adopt=adopt)
        assert summary(plan) == [("blocked", "server1", "consul")]
        message = plan.actions[0].reasons[0].message or ""
        assert f"name held by container {theirs.id[:12]} (hashicorp/consul:1.20, running)" in message
        assert "managed by cluster 'other'" in message
        assert "--adopt" not in message
        assert plan.changes == ()
        assert not plan.is_noop


def test_an_unmanaged_container_with_a_desired_name_is_blocked_with_a_hint() -> None:
    fleet = desired([host("server1", "10.0.0.1")])
    hand_run = unmanaged("server1", "consul", image="progrium/consul", state="exited")
    observed = ObservedFleet((seen(fleet.hosts[0], others=[hand_run]),))
    plan = make_plan(fleet, observed)
    assert summary(plan) == [("blocked", "server1", "consul"), ("create", "server1", "registrator")]
    assert plan.actions[0].reasons == (
        Change(
            message=f"name held by container {hand_run.id[:12]} (progrium/consul, exited), "
            "not managed by us; to take it over: --adopt server1/consul"
        ),
    )
    assert plan.actions[0].observed == hand_run
    assert not plan.actions[0].disruptive
    assert summary(Plan(plan.cluster, plan.changes)) == [("create", "server1", "registrator")]


def test_adopt_takes_over_only_the_named_container() -> None:
    fleet = desired([host("server1", "10.0.0.1"), host("client1", "10.0.1.1", "client")])
    others = {h.name: [unmanaged(h.name, "consul"), unmanaged(h.name, "registrator")] for h in fleet.hosts}
    observed = ObservedFleet(tuple(seen(h, others=others[h.name]) for h in fleet.hosts))
    plan = make_plan(fleet, observed, adopt=["server1/consul", "nosuchhost/consul"])
    assert summary(plan) == [
        ("adopt", "server1", "consul"),
        ("blocked", "client1", "consul"),
        ("blocked", "server1", "registrator"),
        ("blocked", "client1", "registrator"),
    ]
    adopt = plan.actions[0]
    assert adopt.reasons[0].message is not None and adopt.reasons[0].message.endswith("; adopting as asked")
    assert adopt.disruptive
    assert adopt.desired == spec_of(fleet, "server1") and adopt.observed == others["server1"][0]


def as_run_by_hand(spec: ContainerSpec, **changed: object) -> ObservedContainer:
    """A container started by hand that does what ``spec`` says (unless ``changed``), as observe
    shows it: listed without our labels, with its inspect."""
    found = FoundContainer(
        host=spec.host,
        name=spec.name,
        id=container_id(spec.host, spec.name, "hand"),
        image=spec.image,
        command=spec.command,
        mounts=tuple((m.source, m.target) for m in spec.mounts),
        network_mode=spec.network_mode,
        ports=tuple((p.container_port, p.protocol, p.host_port) for p in spec.ports),
        restart_policy=spec.restart_policy,
    )
    found = replace(found, **changed)  # type: ignore[arg-type]
    listed = unmanaged(spec.host, spec.name, image=found.image)
    return replace(listed, found=found)


def test_adopt_all_takes_over_in_place_what_matches_and_replaces_the_rest() -> None:
    fleet = desired([host("server1", "10.0.0.1"), host("client1", "10.0.1.1", "client")])
    others = {h.name: [as_run_by_hand(s) for s in h.specs] for h in fleet.hosts}
    others["client1"][0] = as_run_by_hand(spec_of(fleet, "client1"), restart_policy="no")
    observed = ObservedFleet(tuple(seen(h, others=others[h.name]) for h in fleet.hosts))
    for adopt in (["all"], ["server1", "client1"]):
        plan = make_plan(fleet, observed, adopt=adopt)
        assert summary(plan) == [
            ("adopt-in-place", "server1", "consul"),
            ("adopt", "client1", "consul"),
            ("adopt-in-place", "server1", "registrator"),
            ("adopt-in-place", "client1", "registrator"),
        ]
        in_place, by_replacement = plan.actions[0], plan.actions[1]
        assert not in_place.disruptive and by_replacement.disruptive
        assert "taken over as it runs, nothing restarted" in (in_place.reasons[0].message or "")
        assert by_replacement.reasons[1:] == (Change(field="restart_policy", old="no", new="always"),)
    only_server = make_plan(fleet, observed, adopt=["server1"])
    assert [a.kind.value for a in only_server.actions if a.host == "client1"] == ["blocked", "blocked"]


def test_a_container_adopted_in_place_is_ours_by_id_until_its_spec_changes() -> None:
    fleet = desired([host("server1", "10.0.0.1")])
    spec = spec_of(fleet, "server1")
    hand = as_run_by_hand(spec)
    registrator = ours(spec_of(fleet, "server1", "registrator"))
    observed = ObservedFleet((seen(fleet.hosts[0], managed=[registrator], others=[hand]),))
    adopted = {("server1", "consul"): Adoption(hand.id, spec.spec_hash(), spec.record())}
    assert make_plan(fleet, observed, adopted=adopted).is_noop  # ours, as it should be
    stopped = ObservedFleet(
        (seen(fleet.hosts[0], managed=[registrator], others=[replace(hand, state="exited")]),)
    )
    assert summary(make_plan(fleet, stopped, adopted=adopted)) == [("start", "server1", "consul")]
    # another container under the name: not the one adopted, so someone else's again
    other = replace(hand, id=container_id("server1", "consul", "other"))
    impostor = ObservedFleet((seen(fleet.hosts[0], managed=[registrator], others=[other]),))
    assert summary(make_plan(fleet, impostor, adopted=adopted)) == [("blocked", "server1", "consul")]
    # the spec changes: replaced (with our labels this time), naming each changed field
    newer = desired([host("server1", "10.0.0.1")], consul={"image": "hashicorp/consul:1.21"})
    plan = make_plan(newer, observed, adopted=adopted)
    assert summary(plan) == [("replace", "server1", "consul")]
    assert plan.actions[0].reasons == (
        Change(field="image", old="hashicorp/consul:1.20", new="hashicorp/consul:1.21"),
    )
    assert plan.actions[0].disruptive and plan.actions[0].observed == hand


# --- unreachable ----------------------------------------------------------------------------------


def test_an_unreachable_host_gets_no_actions_and_is_listed() -> None:
    fleet = desired()
    client1 = fleet.host("client1")
    assert client1 is not None
    down = ObservedHost("client1", client1.endpoint, reachable=False, error="connection refused")
    observed = with_host(empty(fleet), down)
    plan = make_plan(fleet, observed)
    assert all(a.host != "client1" for a in plan.actions)
    assert len(plan.actions) == 8  # the other four hosts: agent and registrator each
    assert plan.unreachable == {"client1": "connection refused"}
    assert not plan.is_noop


def test_a_host_never_observed_is_unreachable_and_converged_ones_are_not_touched() -> None:
    fleet = desired()
    observed = ObservedFleet(tuple(h for h in converged(fleet).hosts if h.name != "server2"))
    plan = make_plan(fleet, observed)
    assert plan.actions == ()
    assert plan.unreachable == {"server2": "not observed"}
    assert not plan.is_noop


def test_an_unreachable_retired_host_is_never_a_reason_to_remove() -> None:
    before = desired()
    after = desired([host("server1", "10.0.0.1"), host("server2", "10.0.0.2"), host("server3", "10.0.0.3")])
    observed = converged(before)
    down = [
        replace(h, reachable=False, error="timed out", managed=())
        for h in observed.hosts
        if "client" in h.name
    ]
    observed = ObservedFleet((*(h for h in observed.hosts if "server" in h.name), *down))
    plan = make_plan(after, observed)
    assert plan.actions == ()
    assert plan.retired_hosts == ()
    assert plan.unreachable == {"client1": "timed out", "client2": "timed out"}


# --- determinism and serialisation ----------------------------------------------------------------


def messy_world() -> tuple[DesiredFleet, ObservedFleet]:
    """Something of every kind at once."""
    before = desired(consul={"image": "hashicorp/consul:1.19"})
    after = desired(
        [
            *(host(n, ip) for n, ip in THREE_SERVERS),
            host("client1", "10.0.1.1", "client", registrator=False),
            host("client3", "10.0.1.3", "client"),
        ],
        consul={"image": "hashicorp/consul:1.20"},
    )
    hosts = {h.name: h for h in converged(before).hosts}
    server2 = spec_of(after, "server2")
    hosts["server2"] = replace(hosts["server2"], managed=(ours(server2, "exited"),))
    hosts["server3"] = replace(hosts["server3"], managed=(), others=(unmanaged("server3", "consul"),))
    client3 = after.host("client3")
    assert client3 is not None
    hosts["client3"] = ObservedHost("client3", client3.endpoint, reachable=False, error="no route to host")
    return after, ObservedFleet(tuple(hosts.values()))


def test_a_mixed_plan_is_ordered_as_documented() -> None:
    fleet, observed = messy_world()
    plan = make_plan(fleet, observed, max_removals=10)
    assert summary(plan) == [
        ("replace", "server1", "consul"),
        ("start", "server2", "consul"),
        ("blocked", "server3", "consul"),
        ("replace", "client1", "consul"),
        ("create", "server2", "registrator"),
        ("create", "server3", "registrator"),
        ("remove", "client1", "registrator"),
        ("remove", "client2", "registrator"),
        ("remove", "client2", "consul"),
    ]
    assert plan.unreachable == {"client3": "no route to host"}
    assert plan.retired_hosts == ("client2",)


def test_the_same_input_gives_the_same_plan() -> None:
    fleet, observed = messy_world()
    first = make_plan(fleet, observed, max_removals=10, adopt=["server3/consul"])
    second = make_plan(fleet, observed, max_removals=10, adopt=["server3/consul"])
    assert first == second
    assert json.dumps(first.to_dict()) == json.dumps(second.to_dict())


@pytest.mark.parametrize("seed", range(5))
def test_the_order_things_are_observed_in_does_not_matter(seed: int) -> None:
    fleet, observed = messy_world()
    rng = random.Random(seed)
    hosts = []
    for h in observed.hosts:
        managed, others = list(h.managed), list(h.others)
        rng.shuffle(managed)
        rng.shuffle(others)
        hosts.append(replace(h, managed=tuple(managed), others=tuple(others)))
    rng.shuffle(hosts)
    shuffled = ObservedFleet(tuple(hosts))
    assert json.dumps(make_plan(fleet, shuffled).to_dict()) == json.dumps(
        make_plan(fleet, observed).to_dict()
    )


def test_plan_to_dict() -> None:
    fleet, observed = messy_world()
    plan = make_plan(fleet, observed, max_removals=2)
    data = plan.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["cluster"] == CLUSTER
    counts = {
        "create": 2,
        "replace": 2,
        "start": 1,
        "remove": 3,
        "blocked": 1,
        "adopt": 0,
        "adopt-in-place": 0,
    }
    assert data["counts"] == counts
    assert data["unreachable"] == {"client3": "no route to host"}
    assert data["retired_hosts"] == ["client2"]
    assert data["refused"].startswith("this pass would remove 3 containers, more than the limit of 2")
    replace_client = data["actions"][3]
    assert replace_client == {
        "kind": "replace",
        "host": "client1",
        "container": "consul",
        "role": "client",
        "node": "client1",
        "reasons": [{"field": "image", "old": "hashicorp/consul:1.19", "new": "hashicorp/consul:1.20"}],
        "old_hash": observed.hosts[3].managed[0].spec_hash,
        "new_hash": spec_of(fleet, "client1").spec_hash(),
        "image": "hashicorp/consul:1.20",
        "container_id": observed.hosts[3].managed[0].id,
    }
    removal = data["actions"][-1]
    assert (removal["kind"], removal["new_hash"], removal["image"]) == (
        "remove",
        None,
        "hashicorp/consul:1.19",
    )
    assert data["actions"][0]["reasons"] == [
        {"field": "image", "old": "hashicorp/consul:1.19", "new": "hashicorp/consul:1.20"}
    ]
    assert data["actions"][1]["reasons"] == [{"message": "container is exited"}]


# --- phases: how the plan runs --------------------------------------------------------------------


def names(actions: Iterable[Action]) -> list[tuple[str, str, str]]:
    return [(a.kind.value, a.host, a.name) for a in actions]


def upgrade_with_server2_down() -> Plan:
    """Every agent's image changes; server2's old container has exited meanwhile."""
    before = desired(consul={"image": "hashicorp/consul:1.19"})
    after = desired(consul={"image": "hashicorp/consul:1.20"})
    hosts = {h.name: h for h in converged(before).hosts}
    server2 = (ours(spec_of(before, "server2"), "exited"), ours(spec_of(before, "server2", "registrator")))
    hosts["server2"] = replace(hosts["server2"], managed=server2)
    return make_plan(after, ObservedFleet(tuple(hosts.values())))


def shrink_and_demote() -> Plan:
    """server4 leaves the topology, server3 becomes a client, and server1 still holds the temporary
    container of a replacement that was interrupted before it started."""
    before = desired([*(host(n, ip) for n, ip in THREE_SERVERS), host("server4", "10.0.0.4")])
    after = desired(
        [host("server1", "10.0.0.1"), host("server2", "10.0.0.2"), host("server3", "10.0.0.3", "client")]
    )
    leftover = replace(
        ours(spec_of(before, "server1"), "created"),
        name="consul-next-0123abcd",
        id=container_id("server1", "next"),
    )
    observed = converged(before)
    server1 = before.host("server1")
    assert server1 is not None
    observed = with_host(observed, seen(server1, [*(ours(s) for s in server1.specs), leftover]))
    return make_plan(after, observed)


def test_a_plan_without_changes_has_no_phases() -> None:
    fleet = desired()
    assert make_plan(fleet, converged(fleet)).phases() == ()
    assert Plan(CLUSTER, ()).phases() == ()
    blocked = desired([host("server1", "10.0.0.1")])
    theirs = ours(spec_of(blocked, "server1"), cluster="other")
    registrator = ours(spec_of(blocked, "server1", "registrator"))
    only_blocked = make_plan(blocked, ObservedFleet((seen(blocked.hosts[0], [theirs, registrator]),)))
    assert summary(only_blocked) == [("blocked", "server1", "consul")]
    assert only_blocked.phases() == ()


def test_phases_follow_the_order_of_the_plan() -> None:
    fleet, observed = messy_world()
    plan = make_plan(fleet, observed, max_removals=10, adopt=["server3/consul"])
    phases = plan.phases()
    assert [p.key for p in phases] == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2)]
    assert [(names(p.parallel), names(p.serial)) for p in phases] == [
        (
            [("start", "server2", "consul")],
            [("replace", "server1", "consul"), ("adopt", "server3", "consul")],
        ),
        ([("replace", "client1", "consul")], []),
        ([("create", "server2", "registrator"), ("create", "server3", "registrator")], []),
        ([("remove", "client1", "registrator"), ("remove", "client2", "registrator")], []),
        ([("remove", "client2", "consul")], []),
    ]
    in_phases = [a for p in phases for a in (*p.parallel, *p.serial)]
    assert sorted(names(in_phases)) == sorted(names(plan.changes))
    assert all(p.key == phase_key(a) for p in phases for a in (*p.parallel, *p.serial))


def test_server_disruptions_run_one_at_a_time_down_servers_first_and_the_leader_last() -> None:
    plan = upgrade_with_server2_down()
    servers, clients = plan.phases()
    assert servers.parallel == ()
    assert names(servers.serial) == [("replace", f"server{i}", "consul") for i in (1, 2, 3)]  # as planned
    assert [a.host for a in servers.rollout("server1")] == ["server2", "server3", "server1"]
    assert [a.host for a in servers.rollout("server3")] == ["server2", "server1", "server3"]
    assert [a.host for a in servers.rollout("server2")] == ["server2", "server1", "server3"]
    assert [a.host for a in servers.rollout(None)] == ["server2", "server1", "server3"]
    # the replacements of clients disrupt no server: hosts in parallel
    assert names(clients.parallel) == [("replace", "client1", "consul"), ("replace", "client2", "consul")]
    assert clients.serial == ()


def test_removing_a_server_and_demoting_one_to_a_client_disrupt_a_server() -> None:
    plan = shrink_and_demote()
    assert [(p.key, names(p.parallel), names(p.serial)) for p in plan.phases()] == [
        # the role change is the client's phase (its desired role) but stops a server: serial
        ((0, 1), [], [("replace", "server3", "consul")]),
        ((1, 1), [("remove", "server4", "registrator")], []),
        (
            (1, 3),
            # a temporary container that never started stops no agent
            [("remove", "server1", "consul-next-0123abcd")],
            [("remove", "server4", "consul")],
        ),
    ]


def test_what_disrupts_a_server() -> None:
    fleet, observed = messy_world()
    plan = make_plan(fleet, observed, max_removals=10, adopt=["server3/consul"])
    disrupting = {(a.kind.value, a.host, a.name) for a in plan.changes if disrupts_server(a)}
    assert disrupting == {("replace", "server1", "consul"), ("adopt", "server3", "consul")}
    # a container started by hand is a server by its command line, whatever role it is adopted into
    small = desired([host("server1", "10.0.0.1"), host("client1", "10.0.1.1", "client")])
    by_hand = replace(unmanaged("client1", "consul"), command="consul agent -server -bootstrap-expect=1")
    client1 = seen(small.hosts[1], [ours(spec_of(small, "client1", "registrator"))], [by_hand])
    adopted = make_plan(small, with_host(converged(small), client1), adopt=["client1/consul"])
    assert names(adopted.changes) == [("adopt", "client1", "consul")]
    assert disrupts_server(adopted.changes[0])
    assert not disrupts_server(replace(adopted.changes[0], observed=unmanaged("client1", "consul")))


@pytest.mark.parametrize(
    ("state", "down"), [("running", False), ("restarting", True), ("exited", True), ("created", True)]
)
def test_a_server_is_down_unless_its_container_is_running(state: str, down: bool) -> None:
    spec = spec_of(desired(), "server1")
    action = Action(Kind.REPLACE, "server1", "consul", "server", "server1", (), spec, ours(spec, state))
    assert is_down(action) is down
    assert not is_down(replace(action, kind=Kind.CREATE, observed=None))


# The order Executor.apply ran a plan in before #15, when it decided it itself: copied verbatim (only
# renamed) from reconciler/execute.py, to hold Plan.phases to exactly the same order of execution.
def _reference_down(action: Action) -> bool:
    return action.observed is not None and action.observed.state != "running"


def _reference_disrupts_server(action: Action) -> bool:
    was_server = action.observed is not None and action.observed.is_consul_server
    never_started = (
        action.kind is Kind.REMOVE and action.observed is not None and action.observed.state == "created"
    )
    return action.disruptive and (action.role == "server" or was_server) and not never_started


def _reference_phase(action: Action) -> tuple[int, int]:
    rank = ROLE_ORDER.get(action.role or "", 3)
    return (1, 3 - rank) if action.kind is Kind.REMOVE else (0, rank)


def reference_execution_order(
    plan: Plan, leader: str | None, gated: bool
) -> list[tuple[list[Action], list[Action]]]:
    """REFERENCE (the old executor's code): per phase, the parallel actions then the serial ones."""
    order = []
    for _, phase in groupby(plan.changes, key=_reference_phase):
        actions = list(phase)
        serial = [a for a in actions if _reference_disrupts_server(a)]
        parallel = [a for a in actions if a not in serial]
        if serial and gated:
            serial = sorted(serial, key=lambda a: (not _reference_down(a), a.node == leader))
        order.append((parallel, serial))
    return order


def execution_order(plan: Plan, leader: str | None, gated: bool) -> list[tuple[list[Action], list[Action]]]:
    """What Executor.apply does with Plan.phases now."""
    order = []
    for phase in plan.phases():
        serial = phase.serial
        if serial and gated:
            serial = phase.rollout(leader)
        order.append((list(phase.parallel), list(serial)))
    return order


def representative_plans() -> list[Plan]:
    fleet, observed = messy_world()
    plans = [
        make_plan(fleet, observed, max_removals=10, adopt=["server3/consul"]),
        make_plan(fleet, observed, max_removals=10),
        upgrade_with_server2_down(),
        shrink_and_demote(),
    ]
    # a server action without a node name, which an unknown leader (None) equals
    upgrade = upgrade_with_server2_down()
    plans.append(replace(upgrade, actions=(replace(upgrade.actions[0], node=None), *upgrade.actions[1:])))
    # hand-made plans out of the usual order: a phase key that comes back makes a new phase
    everything = [a for p in plans for a in p.actions]
    for seed in range(6):
        shuffled = list(everything)
        random.Random(seed).shuffle(shuffled)
        plans.append(Plan(CLUSTER, tuple(shuffled)))
    return plans


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("leader", ["server1", "server2", "server3", "server4", "client1", None])
def test_phases_run_in_exactly_the_order_the_executor_used_to_decide(leader: str | None, gated: bool) -> None:
    for plan in representative_plans():
        assert execution_order(plan, leader, gated) == reference_execution_order(plan, leader, gated)


def test_action_record_is_the_planned_action_as_an_audit_row() -> None:
    fleet, observed = messy_world()
    plan = make_plan(fleet, observed, max_removals=2)
    replace_client = plan.actions[3]
    assert action_record(replace_client, 7) == ActionRecord(
        seq=7,
        host="client1",
        kind="replace",
        node="client1",
        role="client",
        container="consul",
        reason=[{"field": "image", "old": "hashicorp/consul:1.19", "new": "hashicorp/consul:1.20"}],
        old_hash=observed.hosts[3].managed[0].spec_hash,
        new_hash=spec_of(fleet, "client1").spec_hash(),
        image="hashicorp/consul:1.20",
        container_id=observed.hosts[3].managed[0].id,
    )
    create = next(a for a in plan.actions if a.kind is Kind.CREATE)
    record = action_record(create, 1)
    assert (record.container_id, record.old_hash) == (None, None)  # nothing observed yet
    assert create.desired is not None and record.new_hash == create.desired.spec_hash()
    blocked = next(a for a in plan.actions if a.kind is Kind.BLOCKED)
    assert blocked.observed is not None and action_record(blocked, 2).container_id == blocked.observed.id
    # every action: the row says what the plan says, reasons as plain dicts
    for seq, action in enumerate(plan.actions, 1):
        record = action_record(action, seq)
        shown = action.to_dict()
        assert record.seq == seq
        assert (record.kind, record.host, record.container, record.role, record.node) == (
            shown["kind"], shown["host"], shown["container"], shown["role"], shown["node"],
        )  # fmt: skip
        assert record.reason == shown["reasons"] == [c.to_dict() for c in action.reasons]
        assert (record.old_hash, record.new_hash, record.image, record.container_id) == (
            shown["old_hash"], shown["new_hash"], shown["image"], shown["container_id"],
        )  # fmt: skip


def test_labels_round_trip_the_record() -> None:
    spec = spec_of(desired(), "server1")
    labels = labels_for(CLUSTER, spec)
    assert L.record_from(labels) == spec.record()
    assert labels[L.MANAGED_BY] == CLUSTER and labels[L.SPEC_HASH] == spec.spec_hash()
    assert (labels[L.HOST], labels[L.ROLE], labels[L.NODE]) == ("server1", "server", "server1")
    assert all(k.startswith(L.PREFIX + ".") for k in labels)
    assert L.record_from({L.SPEC: "not json"}) is None
    assert L.record_from({L.SPEC: "[1, 2]"}) is None
    assert L.record_from({}) is None


def test_endpoint_round_trips() -> None:
    endpoint = Endpoint("tcp://10.0.0.1:2376", 3.5, "/ca", "/cert", "/key")
    assert Endpoint.from_dict(endpoint.to_dict()) == endpoint
    assert Endpoint.from_dict({"url": "unix:///x"}) == Endpoint("unix:///x")
