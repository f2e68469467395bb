"""reconciler.dangers: dangerous changes refused unless the document acknowledges them (pure, no Docker).

What runs is plain data, as in test_plan.py: a converged container is an ObservedContainer whose labels
are ``labels_for(cluster, spec)`` of the spec an *earlier* document rendered; the plan is made for a
later document. The audit of a refused pass goes through ``run_pass`` with an engine double that lists
those containers and fails on any other call, and a real SQLite audit database.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from desired_state.load import Loaded, TopologyError, load_topology
from desired_state.spec import ContainerSpec, DesiredFleet, DesiredHost, Endpoint
from reconciler.actual import Adoption, ObservedContainer, ObservedFleet, ObservedHost
from reconciler.dangers import Danger, find_dangers, refusal
from reconciler.engines import Connections
from reconciler.formatting import format_plan
from reconciler.labels import labels_for
from reconciler.one_pass import PassOptions, PassResult, run_pass
from reconciler.plan import Kind, Plan, make_plan
from reconciler.store import AuditLog

CLUSTER = "shop"
NO_LIMIT = 1000  # --max-removals out of the way: these tests are about the dangerous changes alone


def host(name: str, index: int, role: str = "server", **extra: Any) -> dict[str, Any]:
    ip = f"10.0.0.{index}"
    return {"name": name, "docker": f"ssh://admin@{ip}", "advertise": ip, "role": role, **extra}


def hosts(servers: int, clients: int = 0) -> list[dict[str, Any]]:
    found = [host(f"server{i}", i) for i in range(1, servers + 1)]
    return found + [host(f"client{i}", 100 + i, "client") for i in range(1, clients + 1)]


def document(host_list: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"cluster": CLUSTER, **top, "hosts": host_list}


def load(doc: dict[str, Any]) -> Loaded:
    return load_topology(json.dumps(doc).encode())


def fleet(host_list: list[dict[str, Any]], **top: Any) -> DesiredFleet:
    return load(document(host_list, **top)).fleet


def ours(spec: ContainerSpec, state: str = "running", cluster: str = CLUSTER) -> ObservedContainer:
    """A container the controller made from ``spec``."""
    cid = hashlib.sha256(f"{spec.host}/{spec.name}/{spec.spec_hash()}".encode()).hexdigest()
    return ObservedContainer(
        id=cid, name=spec.name, image=spec.image, state=state, labels=labels_for(cluster, spec),
        command=" ".join(spec.command),
    )  # fmt: skip


def seen(dhost: DesiredHost, managed: Iterable[ObservedContainer] = ()) -> ObservedHost:
    return ObservedHost(dhost.name, dhost.endpoint, reachable=True, managed=tuple(managed))


def running(before: DesiredFleet, state: str = "running") -> ObservedFleet:
    """Every container of ``before`` running, as the controller made them."""
    return ObservedFleet(tuple(seen(h, [ours(s, state) for s in h.specs]) for h in before.hosts))


def empty(after: DesiredFleet) -> ObservedFleet:
    return ObservedFleet(tuple(seen(h) for h in after.hosts))


def plan_for(after: DesiredFleet, observed: ObservedFleet, **kwargs: Any) -> Plan:
    kwargs.setdefault("max_removals", NO_LIMIT)
    return make_plan(after, observed, **kwargs)


def acks(plan: Plan) -> list[str]:
    return [d.acknowledgement for d in plan.dangers]


def open_acks(plan: Plan) -> list[str]:
    return [d.acknowledgement for d in plan.dangers if not d.acknowledged]


def assert_refused_for(plan: Plan, *wanted: str) -> str:
    """Refused, naming exactly these acknowledgements as the ones to add; the refusal's text."""
    assert plan.refused is not None
    assert open_acks(plan) == list(wanted)
    assert plan.refused.endswith(
        f"If this is intended, add to the document: acknowledge: [{', '.join(wanted)}]"
    )
    for ack in wanted:
        assert f"[acknowledge: {ack}]" in plan.refused
    return plan.refused


def assert_goes_ahead(plan: Plan, *acknowledged: str) -> None:
    assert plan.refused is None
    assert [d.acknowledgement for d in plan.dangers if d.acknowledged] == list(acknowledged)
    assert open_acks(plan) == []


# --- nothing running, nothing refused ---------------------------------------------------------------


@pytest.mark.parametrize(
    "top",
    [{}, {"datacenter": "dc9"}, {"consul": {"encrypt": {"env": "GOSSIP"}}}],
    ids=["plain", "other-datacenter", "gossip-key"],
)
def test_a_fresh_fleet_is_never_refused(top: dict[str, Any]) -> None:
    after = fleet(hosts(3, 2), **top)
    plan = plan_for(after, empty(after))
    assert plan.dangers == () and plan.refused is None
    assert {a.kind for a in plan.actions} == {Kind.CREATE}


def test_a_converged_fleet_and_an_ordinary_change_are_not_dangerous() -> None:
    before = fleet(hosts(3, 2))
    assert plan_for(before, running(before)).dangers == ()
    after = fleet(hosts(3, 2), consul={"image": "hashicorp/consul:1.21"})  # an upgrade: replaced, fine
    plan = plan_for(after, running(before))
    assert plan.dangers == () and plan.refused is None
    assert {a.kind for a in plan.actions} == {Kind.REPLACE}


# --- datacenter ---------------------------------------------------------------------------------------


def test_a_new_datacenter_is_refused_with_its_explanation() -> None:
    before = fleet(hosts(3, 1), datacenter="dc1")
    after = fleet(hosts(3, 1), datacenter="dc2")
    plan = plan_for(after, running(before))
    text = assert_refused_for(plan, "datacenter")
    assert text.startswith(
        "dangerous change refused, nothing done: datacenter: the running agents are in datacenter 'dc1' "
        "(server1, server2, server3, client1), the document says 'dc2'; Consul's gossip refuses members "
        "of another datacenter"
    )
    shown = format_plan(plan).splitlines()
    assert shown[0] == "REFUSED: 1 dangerous change, nothing done:"
    assert shown[1].startswith("  ! datacenter: the running agents are in datacenter 'dc1' (server1, server2")
    assert all(len(line) <= 100 for line in shown[1:4]) and shown[2].startswith("    ")
    assert shown[4:7] == [
        "      acknowledge: datacenter",
        "  If this is intended, add to the document: acknowledge: [datacenter]",
        "cluster shop: 4 to replace",
    ]


def test_a_new_datacenter_goes_ahead_when_acknowledged() -> None:
    before = fleet(hosts(3, 1), datacenter="dc1")
    after = fleet(hosts(3, 1), datacenter="dc2", acknowledge=["datacenter"])
    plan = plan_for(after, running(before))
    assert_goes_ahead(plan, "datacenter")
    assert [(a.kind, a.host) for a in plan.actions if a.name == "consul"] == [
        (Kind.REPLACE, h) for h in ("server1", "server2", "server3", "client1")
    ]
    assert format_plan(plan).splitlines()[0].startswith("acknowledged: datacenter: the running agents")


def test_the_datacenter_is_read_from_dockers_command_when_the_spec_label_is_unreadable() -> None:
    before = fleet(hosts(1), datacenter="dc1")
    after = fleet(hosts(1), datacenter="dc2")
    spec = next(s for s in before.hosts[0].specs if s.role == "server")
    old = ours(spec)
    labels = {k: v for k, v in old.labels.items() if not k.endswith(".spec")}
    observed = ObservedFleet((seen(before.hosts[0], [replace(old, labels=labels)]),))
    assert_refused_for(plan_for(after, observed), "datacenter")


# --- a server's node name -----------------------------------------------------------------------------


def test_a_renamed_server_is_refused_a_renamed_client_is_not() -> None:
    before = fleet(hosts(3, 1))
    renamed = hosts(3, 1)
    renamed[1]["node"] = "consul-b"
    renamed[3]["node"] = "web-1"  # a client: no raft membership, nothing to refuse
    plan = plan_for(fleet(renamed), running(before))
    text = assert_refused_for(plan, "node-name:server2")
    assert "server node name: server2 runs server 'server2', the document names it 'consul-b'" in text


def test_a_renamed_server_goes_ahead_when_acknowledged() -> None:
    before = fleet(hosts(3))
    renamed = hosts(3)
    renamed[1]["node"] = "consul-b"
    plan = plan_for(fleet(renamed, acknowledge=["node-name:server2"]), running(before))
    assert_goes_ahead(plan, "node-name:server2")
    assert [(a.kind, a.host, a.node) for a in plan.actions] == [(Kind.REPLACE, "server2", "consul-b")]


def test_an_acknowledgement_for_another_host_does_not_cover_a_rename() -> None:
    before = fleet(hosts(3))
    renamed = hosts(3)
    renamed[1]["node"] = "consul-b"
    plan = plan_for(fleet(renamed, acknowledge=["node-name:server1"]), running(before))
    assert_refused_for(plan, "node-name:server2")
    assert plan.unused_acknowledgements == ("node-name:server1",)


# --- server to client ---------------------------------------------------------------------------------


def test_a_server_made_a_client_is_refused() -> None:
    before = fleet(hosts(3))
    after_hosts = hosts(3)
    after_hosts[2]["role"] = "client"
    after_hosts[2]["node"] = "was-a-server"  # renamed too: one change, server to client, not two
    plan = plan_for(fleet(after_hosts), running(before))
    text = assert_refused_for(plan, "server-to-client:server3")
    assert (
        "server to client: server3 runs a server, the document makes it a client; the cluster loses" in text
    )


def test_a_server_made_a_client_goes_ahead_when_acknowledged() -> None:
    before = fleet(hosts(3))
    after_hosts = hosts(3)
    after_hosts[2]["role"] = "client"
    plan = plan_for(fleet(after_hosts, acknowledge=["server-to-client:server3"]), running(before))
    assert_goes_ahead(plan, "server-to-client:server3")
    assert [(a.kind, a.host, a.role) for a in plan.actions if a.name == "consul"] == [
        (Kind.REPLACE, "server3", "client")
    ]


def test_a_client_made_a_server_is_not_dangerous() -> None:
    before = fleet(hosts(3, 1))
    after_hosts = hosts(3, 1)
    after_hosts[3]["role"] = "server"
    assert plan_for(fleet(after_hosts), running(before)).dangers == ()


# --- the gossip key -----------------------------------------------------------------------------------

KEY_A = {"env": "GOSSIP_A"}
KEY_B = {"file": "/etc/consul-reconciler/gossip-b"}


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        (
            KEY_A,
            KEY_B,
            "use the key from env:GOSSIP_A, the document the key from file:/etc/consul-reconciler/",
        ),
        (None, KEY_A, "use no gossip key, the document the key from env:GOSSIP_A"),
        (KEY_A, None, "use the key from env:GOSSIP_A, the document no gossip key"),
    ],
    ids=["other-reference", "added", "removed"],
)
def test_a_new_gossip_key_reference_is_refused(
    old: dict[str, str] | None, new: dict[str, str] | None, said: str
) -> None:
    before = fleet(hosts(3, 1), consul={"encrypt": old} if old else {})
    after_consul = {"encrypt": new} if new else {}
    plan = plan_for(fleet(hosts(3, 1), consul=after_consul), running(before))
    text = assert_refused_for(plan, "gossip-key")
    assert "gossip key: the running agents (server1, server2, server3, client1) " + said in text
    assert "Only the reference is compared: a new key under the same reference is not seen" in text
    acknowledged = fleet(hosts(3, 1), consul=after_consul, acknowledge=["gossip-key"])
    assert_goes_ahead(plan_for(acknowledged, running(before)), "gossip-key")


def test_the_same_gossip_key_reference_is_not_a_change_whatever_its_value() -> None:
    """The value is never known to the plan: it is never read, so a new value is not seen (documented)."""
    before = fleet(hosts(3), consul={"encrypt": KEY_A})
    after = fleet(hosts(3), consul={"encrypt": KEY_A, "image": "hashicorp/consul:1.21"})
    assert plan_for(after, running(before)).dangers == ()


# --- removing servers: more than a minority -----------------------------------------------------------


@pytest.mark.parametrize(
    ("servers", "removed", "refused"),
    [(1, 1, True), (2, 1, True), (3, 1, False), (3, 2, True), (5, 2, False), (5, 3, True), (7, 3, False)],
)
def test_removing_more_than_a_minority_of_the_servers_is_refused(
    servers: int, removed: int, refused: bool
) -> None:
    before = fleet(hosts(servers, 1))
    kept = hosts(servers, 1)[: servers - removed] + hosts(servers, 1)[servers:]
    if not any(h["role"] == "server" for h in kept):
        kept = [host("fresh", 50), *kept]  # a document needs a server: a new one, which runs nothing yet
    plan = plan_for(fleet(kept), running(before))
    if refused:
        text = assert_refused_for(plan, "remove-servers")
        assert f"the document removes {removed} of the {servers} running servers" in text
        assert "host left the topology" in text
        ok = plan_for(fleet(kept, acknowledge=["remove-servers"]), running(before))
        assert_goes_ahead(ok, "remove-servers")
    else:
        assert plan.dangers == () and plan.refused is None
    assert sum(1 for a in plan.actions if a.kind is Kind.REMOVE and a.role == "server") == removed


def test_servers_made_clients_count_as_removed() -> None:
    before = fleet(hosts(3))
    after_hosts = hosts(3)
    after_hosts[1]["role"] = after_hosts[2]["role"] = "client"
    plan = plan_for(fleet(after_hosts), running(before))
    text = assert_refused_for(plan, "server-to-client:server2", "server-to-client:server3", "remove-servers")
    assert "removes 2 of the 3 running servers (server2: made a client, server3: made a client)" in text
    both = ["server-to-client:server2", "server-to-client:server3"]
    assert_refused_for(plan_for(fleet(after_hosts, acknowledge=both), running(before)), "remove-servers")


def test_five_servers_two_leave_and_one_is_made_a_client_is_three_of_five() -> None:
    before = fleet(hosts(5))
    after_hosts = hosts(5)[:3]
    after_hosts[2]["role"] = "client"
    plan = plan_for(fleet(after_hosts, acknowledge=["server-to-client:server3"]), running(before))
    assert_refused_for(plan, "remove-servers")
    assert "removes 3 of the 5 running servers" in (plan.refused or "")


def test_a_stopped_server_still_counts_a_never_started_one_does_not() -> None:
    before = fleet(hosts(3))
    after = fleet(hosts(3)[:1])
    stopped = running(before, "exited")
    assert_refused_for(plan_for(after, stopped), "remove-servers")
    never_started = ObservedFleet(
        (stopped.hosts[0], *(seen(h, [ours(s, "created") for s in h.specs]) for h in before.hosts[1:]))
    )
    assert plan_for(after, never_started).dangers == ()


def test_servers_never_started_and_none_going_is_no_removal() -> None:
    """The servers created but never started (their engines restarted mid-creation), the clients running:
    no server runs and none goes, so nothing is refused. A controller once refused this pass ("removes 0
    of the 0 running servers, more than a minority (-1)") and converged no more until the document
    acknowledged a removal that was not there."""
    before = fleet(hosts(1, 2))
    observed = ObservedFleet(
        tuple(
            seen(h, [ours(s, "created" if s.role == "server" else "running") for s in h.specs])
            for h in before.hosts
        )
    )
    new_image = fleet(hosts(1, 2), consul={"image": "hashicorp/consul:1.21"})
    for after in (before, new_image):
        plan = plan_for(after, observed)
        assert plan.dangers == () and plan.refused is None
        assert any(a.host == "server1" and a.name == "consul" for a in plan.actions)  # started or replaced
    # a server that ran and goes is still refused with the same clients running
    assert_refused_for(plan_for(fleet([*hosts(0, 2), host("fresh", 50)]), running(before)), "remove-servers")


# --- what is not observed decides nothing ------------------------------------------------------------


def test_an_unreachable_host_decides_nothing() -> None:
    before = fleet(hosts(3), datacenter="dc1")
    after = fleet(hosts(3), datacenter="dc2")
    observed = ObservedFleet(
        tuple(ObservedHost(h.name, h.endpoint, reachable=False, error="timed out") for h in before.hosts)
    )
    plan = plan_for(after, observed)
    assert plan.dangers == () and plan.refused is None and plan.actions == ()


def test_unreachable_and_deferred_servers_are_not_counted() -> None:
    """3 of 5 servers seen (2 away): removing 1 of the 3 is a minority of what is seen, 2 are not."""
    before = fleet(hosts(5))
    observed = running(before)
    away = ObservedHost("server5", before.hosts[4].endpoint, reachable=False, error="timed out")
    observed = ObservedFleet((*observed.hosts[:4], away))
    keep_four = fleet(hosts(5)[1:])  # server1 leaves; server5 (unreachable) stays
    plan = plan_for(keep_four, observed, deferred={"server4": "backing off"})
    assert plan.dangers == ()
    keep_three = fleet(hosts(5)[2:])  # server1 and server2 leave: 2 of the 3 seen
    assert_refused_for(plan_for(keep_three, observed, deferred={"server4": "backing off"}), "remove-servers")


def test_containers_of_another_cluster_are_not_ours_to_protect() -> None:
    other = fleet(hosts(3), datacenter="dc1")
    observed = ObservedFleet(tuple(seen(h, [ours(s, cluster="other") for s in h.specs]) for h in other.hosts))
    after = fleet(hosts(3), datacenter="dc2")
    assert plan_for(after, observed).dangers == ()


def test_an_agent_adopted_in_place_is_protected_like_ours() -> None:
    before = fleet(hosts(1), datacenter="dc1")
    after = fleet(hosts(1), datacenter="dc2")
    spec = next(s for s in before.hosts[0].specs if s.role == "server")
    hand = ObservedContainer(id="a" * 64, name="consul", image=spec.image, state="running")
    observed = ObservedFleet((ObservedHost("server1", before.hosts[0].endpoint, True, others=(hand,)),))
    adopted = {("server1", "consul"): Adoption(hand.id, spec.spec_hash(), spec.record())}
    assert_refused_for(plan_for(after, observed, adopted=adopted), "datacenter")


# --- all at once ---------------------------------------------------------------------------------------


def test_every_dangerous_change_is_listed_at_once_in_a_fixed_order() -> None:
    before = fleet(hosts(5, 1), datacenter="dc1", consul={"encrypt": KEY_A})
    after_hosts = hosts(5, 1)
    after_hosts[0]["node"] = "consul-a"
    after_hosts[2]["role"] = "client"
    after_hosts = [after_hosts[0], after_hosts[2], after_hosts[5]]  # server2, server4, server5 leave
    after = fleet(after_hosts, datacenter="dc2", consul={"encrypt": KEY_B})
    plan = plan_for(after, running(before))
    wanted = ["datacenter", "gossip-key", "node-name:server1", "server-to-client:server3", "remove-servers"]
    text = assert_refused_for(plan, *wanted)
    assert text.startswith("dangerous changes refused, nothing done: datacenter: ")
    partly = fleet(after_hosts, datacenter="dc2", consul={"encrypt": KEY_B}, acknowledge=wanted[:2])
    assert_refused_for(plan_for(partly, running(before)), *wanted[2:])
    everything = fleet(after_hosts, datacenter="dc2", consul={"encrypt": KEY_B}, acknowledge=wanted)
    assert_goes_ahead(plan_for(everything, running(before)), *wanted)


def test_too_many_removals_and_dangerous_changes_are_refused_together() -> None:
    before = fleet(hosts(3), datacenter="dc1")
    plan = make_plan(fleet(hosts(3)[:1], datacenter="dc2"), running(before), max_removals=1)
    assert plan.refused is not None
    first, _, second = plan.refused.partition("; dangerous changes refused")
    assert first.startswith("this pass would remove 4 containers, more than the limit of 1")
    assert "[acknowledge: datacenter]" in second and "[acknowledge: remove-servers]" in second


def test_the_plan_document_carries_the_dangers() -> None:
    before = fleet(hosts(3), datacenter="dc1")
    plan = plan_for(
        fleet(hosts(3), datacenter="dc2", acknowledge=["datacenter", "gossip-key"]), running(before)
    )
    data = json.loads(json.dumps(plan.to_dict()))
    assert [(d["acknowledgement"], d["acknowledged"]) for d in data["dangers"]] == [("datacenter", True)]
    assert data["dangers"][0]["explanation"].startswith("datacenter: the running agents are in")
    assert data["unused_acknowledgements"] == ["gossip-key"] and data["refused"] is None


def test_an_acknowledgement_that_matches_nothing_is_harmless_and_noted() -> None:
    before = fleet(hosts(3))
    after = fleet(hosts(3), acknowledge=["datacenter", "server-to-client:server2"])
    plan = plan_for(after, running(before))
    assert plan.refused is None and plan.actions == () and plan.is_noop
    assert plan.unused_acknowledgements == ("datacenter", "server-to-client:server2")
    assert format_plan(plan).splitlines() == [
        "note: acknowledge 'datacenter' matches no change now; take it out once its change is done, or it "
        "lets the next such change through unasked",
        "note: acknowledge 'server-to-client:server2' matches no change now; take it out once its change is "
        "done, or it lets the next such change through unasked",
        "cluster shop: nothing to do; every host matches the topology.",
    ]


def test_refusal_of_nothing_and_of_acknowledged_dangers_is_none() -> None:
    assert refusal([]) is None
    assert refusal([Danger("datacenter", "why", acknowledged=True)]) is None
    assert refusal([Danger("datacenter", "why")]) == (
        "dangerous change refused, nothing done: why [acknowledge: datacenter]. "
        "If this is intended, add to the document: acknowledge: [datacenter]"
    )


def test_find_dangers_skips_hosts_left_alone() -> None:
    before = fleet(hosts(3), datacenter="dc1")
    after = fleet(hosts(3), datacenter="dc2")
    assert find_dangers(after, running(before), skip={"server1", "server2", "server3"}) == ()
    found = find_dangers(after, running(before), skip={"server1"})
    assert [d.acknowledgement for d in found] == ["datacenter"]
    assert "(server2, server3)" in found[0].explanation


# --- the acknowledge field ----------------------------------------------------------------------------


def issues_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(TopologyError) as caught:
        load(doc)
    return [(i.path, i.message) for i in caught.value.issues]


def test_every_form_of_acknowledgement_validates() -> None:
    every = ["datacenter", "gossip-key", "remove-servers", "node-name:server1", "server-to-client:client1"]
    loaded = load(document(hosts(1, 1), acknowledge=every))
    assert loaded.topology.acknowledge == tuple(every)
    assert loaded.fleet.acknowledged == frozenset(every)
    assert load(document(hosts(1))).fleet.acknowledged == frozenset()


FORMS = "the forms are: datacenter, gossip-key, remove-servers, node-name:HOST, server-to-client:HOST"


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("datacentre", f"'datacentre': not a change that can be acknowledged; {FORMS}"),
        (
            "datacenter:dc2",
            f"'datacenter:dc2': 'datacenter' is cluster-wide: write it alone, without ':dc2'; {FORMS}",
        ),
        ("node-name", "'node-name': 'node-name' names a host: write 'node-name:HOST' with the host's name"),
        ("server-to-client:", "'server-to-client:': 'server-to-client' names a host: write"),
        ("node-name:bad host", "'node-name:bad host': 'node-name' names a host"),
        ("DATACENTER", "'DATACENTER': not a change that can be acknowledged"),
    ],
)
def test_an_unknown_acknowledgement_is_refused_naming_the_field(written: str, message: str) -> None:
    found = issues_of(document(hosts(1), acknowledge=["gossip-key", written]))
    assert len(found) == 1
    path, text = found[0]
    assert path == "acknowledge[1]"
    assert text.startswith(message), text


def test_a_per_host_acknowledgement_must_name_a_host_of_the_document() -> None:
    found = issues_of(document(hosts(2), acknowledge=["node-name:server1", "server-to-client:sever2"]))
    assert found == [
        (
            "acknowledge[1]",
            "'server-to-client:sever2' names no host of the topology (hosts[].name: server1, server2)",
        )
    ]


def test_acknowledge_must_be_a_list_of_strings() -> None:
    assert [p for p, _ in issues_of(document(hosts(1), acknowledge="datacenter"))] == ["acknowledge"]
    assert [p for p, _ in issues_of(document(hosts(1), acknowledge=[3]))] == ["acknowledge[0]"]


# --- the audit of a refused pass ----------------------------------------------------------------------


class ListingOnly:
    """A Docker API that lists the containers it was given and fails the test on any other call."""

    def __init__(self, containers: Sequence[ObservedContainer]) -> None:
        self.listed = [
            {
                "Id": c.id, "Names": [f"/{c.name}"], "Image": c.image, "State": c.state,
                "Labels": dict(c.labels), "Command": c.command,
            }
            for c in containers
        ]  # fmt: skip

    def containers(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if filters and "label" in filters:
            return [dict(c) for c in self.listed]
        return []

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a refused pass called the engine's {name}()")


class Client:
    def __init__(self, api: ListingOnly) -> None:
        self.api = api


class Engines(Connections):
    """One ListingOnly engine per host, in place of real ones."""

    def __init__(self, observed: ObservedFleet) -> None:
        super().__init__()
        self.clients = {h.name: Client(ListingOnly(h.managed)) for h in observed.hosts}

    def get(self, host: str, endpoint: Endpoint) -> Any:
        return self.clients[host]


def test_a_refused_pass_is_audited_and_touches_nothing(tmp_path: Path) -> None:
    before = fleet(hosts(3), datacenter="dc1")
    loaded = load(document(hosts(3), datacenter="dc2"))
    audit = AuditLog(str(tmp_path / "audit.db"))
    try:
        result = run_pass(
            loaded,
            source="test.yaml",
            connections=Engines(running(before)),
            audit=audit,
            options=PassOptions(),
        )
        assert result.status == "refused" and not result.ok and result.applied is None
        assert result.plan.unreachable == {}  # every engine was listed (and asked nothing else)
        assert result.refused == result.plan.refused and "[acknowledge: datacenter]" in result.refused
        assert result.run_id is not None
        run = audit.get_run(result.run_id)
        assert run is not None
        assert run.status == "refused" and run.error == result.refused
        assert run.summary == {**{k.value: 0 for k in Kind}, "replace": 3}
        assert audit.actions() == []  # no action was started, none recorded
        assert audit.state.known_hosts(CLUSTER) == {}  # a refused pass remembers no host either
    finally:
        audit.close()


def test_a_pass_that_makes_acknowledged_changes_says_so_in_its_summary() -> None:
    before = fleet(hosts(3), datacenter="dc1")
    plan = plan_for(fleet(hosts(3), datacenter="dc2", acknowledge=["datacenter"]), running(before))
    result = PassResult(plan, running(before))
    assert result.summary()["acknowledged"] == ["datacenter"]
    assert "acknowledged" not in PassResult(plan_for(before, running(before)), running(before)).summary()


def test_only_the_agents_a_pass_replaces_are_read_further(monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent left as it runs matches its spec (whose hash covers datacenter, node, role and the key's
    reference): a converged pass over many hosts parses no spec label for this."""
    before = fleet(hosts(3, 2), datacenter="dc1")
    after = fleet(hosts(3, 2), datacenter="dc2")
    assert find_dangers(after, running(before), changing=()) == ()  # nothing replaced: nothing changes
    assert [d.acknowledgement for d in find_dangers(after, running(before), changing={"client1"})] == [
        "datacenter"
    ]

    def unread(self: ObservedContainer) -> None:
        raise AssertionError(f"the spec label of {self.name} was parsed")

    monkeypatch.setattr(ObservedContainer, "record", unread)
    assert plan_for(before, running(before)).dangers == ()
