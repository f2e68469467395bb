"""reconciler.formatting: plans and specs as a person reads them; secrets only ever as references."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from desired_state.load import load_topology
from desired_state.render import render
from desired_state.secrets import REDACTED
from desired_state.spec import ContainerSpec, DesiredFleet
from reconciler.actual import ObservedContainer, ObservedFleet, ObservedHost
from reconciler.formatting import changes_line, docker_run_line, format_change, format_plan, host_report
from reconciler.labels import labels_for
from reconciler.plan import Change, Plan, make_plan

ROOT = Path(__file__).resolve().parents[2]
GOSSIP_KEY = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="


def host(name: str, ip: str, role: str = "server", **extra: Any) -> dict[str, Any]:
    return {"name": name, "docker": f"ssh://admin@{ip}", "advertise": ip, "role": role, **extra}


def desired(hosts: list[dict[str, Any]], **top: Any) -> DesiredFleet:
    return render(load_topology(json.dumps({"cluster": "shop", **top, "hosts": hosts}).encode()).topology)


def ours(spec: ContainerSpec, state: str = "running") -> ObservedContainer:
    cid = f"{spec.host}-{spec.name}".encode().hex().ljust(64, "0")
    return ObservedContainer(cid, spec.name, spec.image, state, labels_for("shop", spec))


def seen(fleet: DesiredFleet, name: str, managed: list[ObservedContainer], **kw: Any) -> ObservedHost:
    dhost = fleet.host(name)
    endpoint = dhost.endpoint if dhost else fleet.hosts[0].endpoint
    return ObservedHost(name, endpoint, reachable=kw.pop("reachable", True), managed=tuple(managed), **kw)


def spec_of(fleet: DesiredFleet, host_name: str, name: str = "consul") -> ContainerSpec:
    dhost = fleet.host(host_name)
    assert dhost is not None
    return next(s for s in dhost.specs if s.name == name)


# --- format_plan -------------------------------------------------------------------------------------------


@pytest.fixture
def every_kind() -> Plan:
    """+ create, ~ replace (image), > start, - remove (retired host), ! blocked, ? unreachable."""
    old = desired(
        [host("s1", "10.0.0.1"), host("c1", "10.0.1.1", "client")], consul={"image": "hashicorp/consul:1.19"}
    )
    new = desired(
        [host("s1", "10.0.0.1"), host("c1", "10.0.1.1", "client"), host("c2", "10.0.1.2", "client")],
        consul={"image": "hashicorp/consul:1.20"},
    )
    # a client left the topology (a server leaving too would be most of the servers: refused)
    gone = desired([host("s1", "10.0.0.1"), host("old1", "10.0.9.1", "client")])
    hand_run = ObservedContainer("f" * 64, "consul", "progrium/consul", "running")
    observed = ObservedFleet(
        (
            seen(new, "s1", [ours(spec_of(old, "s1")), ours(spec_of(new, "s1", "registrator"), "exited")]),
            ObservedHost("c1", new.hosts[1].endpoint, reachable=True, others=(hand_run,)),
            ObservedHost("c2", new.hosts[2].endpoint, reachable=False, error="connection refused"),
            seen(gone, "old1", [ours(s) for s in gone.hosts[1].specs]),
        )
    )
    return make_plan(new, observed)


def test_format_plan_shows_every_kind_with_its_symbol(every_kind: Plan) -> None:
    text = format_plan(every_kind)
    assert (
        text.splitlines()[0]
        == "cluster shop: 1 to create, 1 to replace, 1 to start, 2 to remove, 1 blocked; "
        "1 host unreachable, state unknown (c2)"
    )
    assert (
        "  ~ replace  consul (server)\n      image: 'hashicorp/consul:1.19' -> 'hashicorp/consul:1.20'"
        in text
    )
    assert "  > start    registrator (registrator)\n      container is exited" in text
    assert "  + create   registrator (registrator)  image gliderlabs/registrator:latest\n" in text
    assert "      container is missing" in text
    assert (
        "  ! blocked  consul (client)\n      name held by container ffffffffffff (progrium/consul, running)"
        in text
    )
    assert "--adopt c1/consul" in text
    assert "host old1  (no longer in the topology)" in text
    assert "  - remove   registrator (registrator)\n      host is no longer in the topology" in text
    assert "  - remove   consul (client)\n      host is no longer in the topology" in text
    assert "host c2\n  ? unreachable, nothing planned: connection refused" in text
    assert "REFUSED" not in text


def test_format_plan_groups_actions_under_their_host(every_kind: Plan) -> None:
    text = format_plan(every_kind)
    headers = [line for line in text.splitlines() if line.startswith("host ")]
    assert headers == ["host s1", "host c1", "host old1  (no longer in the topology)", "host c2"]
    s1 = text.index("host s1")
    c1 = text.index("host c1")
    assert s1 < text.index("~ replace  consul (server)") < text.index("> start    registrator") < c1
    assert (
        c1
        < text.index("! blocked  consul (client)")
        < text.index("+ create   registrator")
        < text.index("host old1")
    )


def test_format_plan_shows_a_command_change_as_removed_and_added_flags() -> None:
    before = desired([host("s1", "10.0.0.1")])
    after = desired([host("s1", "10.0.0.1")], consul={"ui": False, "extra_args": ["-log-level=warn"]})
    observed = ObservedFleet((seen(before, "s1", [ours(s) for s in before.hosts[0].specs]),))
    text = format_plan(make_plan(after, observed))
    assert "  ~ replace  consul (server)\n      command:\n        - -ui\n        + -log-level=warn" in text


def test_format_change_of_a_reordered_list_and_a_message() -> None:
    assert format_change(Change(field="mounts", old=["/a:/x", "/b:/y"], new=["/b:/y", "/a:/x"])) == [
        "mounts: order changed: [/a:/x /b:/y] -> [/b:/y /a:/x]"
    ]
    assert format_change(Change(field="network_mode", old="host", new="bridge")) == [
        "network_mode: 'host' -> 'bridge'"
    ]
    assert format_change(Change(message="container is dead")) == ["container is dead"]


def test_format_plan_of_a_converged_fleet() -> None:
    fleet = desired([host("s1", "10.0.0.1")])
    observed = ObservedFleet((seen(fleet, "s1", [ours(s) for s in fleet.hosts[0].specs]),))
    assert (
        format_plan(make_plan(fleet, observed))
        == "cluster shop: nothing to do; every host matches the topology."
    )


def test_format_plan_of_a_refused_pass_says_so_first() -> None:
    before = desired(
        [host("s1", "10.0.0.1"), host("c2", "10.0.0.2", "client"), host("c3", "10.0.0.3", "client")]
    )
    after = desired([host("s1", "10.0.0.1")])
    observed = ObservedFleet(tuple(seen(before, h.name, [ours(s) for s in h.specs]) for h in before.hosts))
    plan = make_plan(after, observed, max_removals=1)
    lines = format_plan(plan).splitlines()
    assert lines[0] == (
        "REFUSED: this pass would remove 4 containers, more than the limit of 1; "
        "check the topology, then raise --max-removals if this is intended"
    )
    assert lines[1] == "cluster shop: 4 to remove"


def test_format_plan_with_only_an_unreachable_host() -> None:
    fleet = desired([host("s1", "10.0.0.1")])
    observed = ObservedFleet(
        (ObservedHost("s1", fleet.hosts[0].endpoint, reachable=False, error="timed out"),)
    )
    assert format_plan(make_plan(fleet, observed)) == (
        "cluster shop: no changes on the hosts observed; 1 host unreachable, state unknown (s1)"
        "\n\nhost s1\n  ? unreachable, nothing planned: timed out"
    )


def test_a_changes_line_never_says_no_changes_alone_when_a_host_was_not_looked_at() -> None:
    fleet = desired(
        [host("s1", "10.0.0.1"), host("c2", "10.0.0.2", "client"), host("c3", "10.0.0.3", "client")]
    )
    down = ObservedHost("c2", fleet.hosts[1].endpoint, reachable=False, error="timed out")
    observed = ObservedFleet((seen(fleet, "s1", [ours(s) for s in fleet.hosts[0].specs]), down))
    plan = make_plan(fleet, observed, deferred={"c3": "backing off"})
    assert changes_line(plan, "") == (
        "no changes on the hosts observed; 1 host unreachable, state unknown (c2); "
        "1 host not tried while backing off, state unknown (c3)"
    )
    assert changes_line(plan, "", hosts=2) == (
        "nothing observed, so nothing known; 1 host unreachable, state unknown (c2); "
        "1 host not tried while backing off, state unknown (c3)"
    )
    assert changes_line(plan, "create 2").startswith("create 2; 1 host unreachable")
    converged = make_plan(desired([host("s1", "10.0.0.1")]), ObservedFleet((observed.hosts[0],)))
    assert changes_line(converged, "") == "no changes"


# --- docker_run_line -------------------------------------------------------------------------------------


def test_docker_run_lines_of_the_blog() -> None:
    fleet = render(load_topology((ROOT / "examples" / "blog.yaml").read_bytes()).topology)
    assert docker_run_line(spec_of(fleet, "node1")) == (
        "docker run -d --name consul --net=host -v /data/consul:/consul/data --restart=always "
        "hashicorp/consul:1.20 agent -server -bootstrap-expect=1 -node=node1 -datacenter=dc1 "
        "-client 0.0.0.0 -advertise 192.168.99.100 -ui"
    )
    assert docker_run_line(spec_of(fleet, "node1", "registrator")) == (
        "docker run -d --name registrator --net=host -v /var/run/docker.sock:/tmp/docker.sock "
        "--restart=always gliderlabs/registrator:latest -internal -ip 192.168.99.100 consul://192.168.99.100:8500"
    )
    assert "-retry-join=192.168.99.100" in docker_run_line(spec_of(fleet, "node2"))


def test_docker_run_line_in_bridge_mode_publishes_ports() -> None:
    fleet = desired([host("s1", "10.0.0.1", network="bridge")])
    line = docker_run_line(spec_of(fleet, "s1"))
    assert "--net=bridge" in line and "--net=host" not in line
    argv = shlex.split(line)
    published = [argv[i + 1] for i, a in enumerate(argv) if a == "-p"]
    assert published == [
        "8300:8300",
        "8301:8301",
        "8301:8301/udp",
        "8302:8302",
        "8302:8302/udp",
        "8500:8500",
        "8600:8600",
        "8600:8600/udp",
    ]


def test_docker_run_line_quotes_for_the_shell() -> None:
    fleet = desired([host("s1", "10.0.0.1")], consul={"extra_args": ["-node-meta=rack:row 1"]})
    spec = spec_of(fleet, "s1")
    line = docker_run_line(spec)
    assert "'-node-meta=rack:row 1'" in line
    assert shlex.split(line)[-1] == "-node-meta=rack:row 1"
    with_env = replace(spec, env=(("CONSUL_LICENSE", "a b"),))
    assert "-e 'CONSUL_LICENSE=a b'" in docker_run_line(with_env)


# --- secrets never show ------------------------------------------------------------------------------------


def test_gossip_key_value_never_appears_in_plans_or_run_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUL_GOSSIP_KEY", GOSSIP_KEY)
    hosts = [host("s1", "10.0.0.1"), host("c1", "10.0.1.1", "client")]
    before = desired(hosts, consul={"encrypt": {"file": "/etc/consul/gossip.key"}})
    after = desired(hosts, consul={"encrypt": {"env": "CONSUL_GOSSIP_KEY"}})
    # s1 runs with the old reference (a replace naming secret_files); c1 is new (a create)
    observed = ObservedFleet(
        (seen(after, "s1", [ours(s) for s in before.hosts[0].specs]), seen(after, "c1", []))
    )
    plan = make_plan(after, observed)
    assert [(a.kind.value, a.host, a.name) for a in plan.actions] == [
        ("replace", "s1", "consul"),
        ("create", "c1", "consul"),
        ("create", "c1", "registrator"),
    ]
    assert plan.actions[0].reasons == (
        Change(
            field="secret_files",
            old=["/consul/config/encrypt.json:encrypt=<file:/etc/consul/gossip.key>"],
            new=["/consul/config/encrypt.json:encrypt=<env:CONSUL_GOSSIP_KEY>"],
        ),
    )
    outputs = {
        "format_plan": format_plan(plan),
        "to_dict": json.dumps(plan.to_dict()),
        "repr": repr(plan),
        **{f"run {h.name}/{s.name}": docker_run_line(s) for h in after.hosts for s in h.specs},
    }
    for where, text in outputs.items():
        assert GOSSIP_KEY not in text, where
        assert GOSSIP_KEY[:16] not in text, where
    assert "env:CONSUL_GOSSIP_KEY" in outputs["format_plan"]
    agent_line = outputs["run c1/consul"]
    assert f'/consul/config/encrypt.json = {{"encrypt": "{REDACTED}"}}' in agent_line
    assert "value from env:CONSUL_GOSSIP_KEY" in agent_line
    assert "-encrypt" not in shlex.split(agent_line.splitlines()[0])
    assert REDACTED not in outputs["run c1/registrator"]


def test_the_gossip_key_value_does_not_change_any_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = [host("s1", "10.0.0.1")]
    monkeypatch.setenv("CONSUL_GOSSIP_KEY", GOSSIP_KEY)
    first = [
        s.spec_hash() for s in desired(hosts, consul={"encrypt": {"env": "CONSUL_GOSSIP_KEY"}}).hosts[0].specs
    ]
    monkeypatch.setenv("CONSUL_GOSSIP_KEY", "k4cyl0oZbdW5sGQGOv1VZQ==")
    second = [
        s.spec_hash() for s in desired(hosts, consul={"encrypt": {"env": "CONSUL_GOSSIP_KEY"}}).hosts[0].specs
    ]
    assert first == second


def test_a_hosts_report_names_our_containers_and_what_the_plan_would_change_there() -> None:
    fleet = desired([host("s1", "127.0.0.1"), host("c1", "127.0.0.2", "client")])
    observed = ObservedFleet(
        (
            seen(fleet, "s1", [ours(spec_of(fleet, "s1"), "exited")]),
            seen(fleet, "c1", [], reachable=False, error="engine unreachable"),
        )
    )
    plan = make_plan(fleet, observed)
    assert host_report("shop", "s1", plan, observed.host("s1")) == {
        "reachable": True,
        "observed": {"consul": "exited"},
        "drift": ["start consul", "create registrator"],
    }
    assert host_report("shop", "c1", plan, observed.host("c1")) == {  # not observed: drift unknown
        "reachable": False,
        "observed": {},
        "drift": None,
    }
    assert host_report("shop", "gone", plan, None) == {"reachable": None, "observed": {}, "drift": None}


def test_a_sharded_pass_counts_the_other_controllers_hosts_and_does_not_list_them() -> None:
    fleet = desired(
        [host("s1", "10.0.0.1"), host("c2", "10.0.0.2", "client"), host("c3", "10.0.0.3", "client")]
    )
    observed = ObservedFleet((seen(fleet, "s1", [ours(s) for s in fleet.hosts[0].specs]),))
    plan = make_plan(fleet, observed, deferred={"c2": "owned by ctl-b:12", "c3": "owned by ctl-c:13"})
    line = changes_line(plan, "")
    assert line == "no changes on this controller's hosts; 2 hosts left to other controllers"
