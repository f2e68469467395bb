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
from typing import Any

import pytest

from desired_state.load import load_topology
from desired_state.render import render
from desired_state.spec import ContainerSpec, DesiredFleet, DesiredHost, Endpoint
from reconciler import labels as L
from reconciler.actual import ObservedContainer, ObservedFleet, ObservedHost
from reconciler.execute import action_record
from reconciler.labels import labels_for
from reconciler.plan import Change, Kind, Plan, make_plan
from reconciler.store import ActionRecord

CLUSTER = "shop"
THREE_SERVERS = (("server1", "10.0.0.1"), ("server2", "10.0.0.2"), ("server3", "10.0.0.3"))


def host(name: str, ip: str, role: str = "server", **extra: Any) -> dict[str, Any]:
    return {"name": name, "docker": f"tcp://{ip}:2376", "advertise": ip, "role": role, **extra}


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
    assert data["counts"] == {"create": 2, "replace": 2, "start": 1, "remove": 3, "blocked": 1, "adopt": 0}
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
