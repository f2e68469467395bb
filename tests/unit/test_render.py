"""desired_state.render and desired_state.spec: the containers each host should run, and their hash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from desired_state.load import load_topology
from desired_state.model import Topology
from desired_state.render import BRIDGE_PORTS, render
from desired_state.spec import ContainerSpec, DesiredFleet, Mount, Port

ROOT = Path(__file__).resolve().parents[2]
BLOG = ROOT / "examples" / "blog.yaml"
GOSSIP_32 = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="


def topology(data: dict[str, Any]) -> Topology:
    return load_topology(json.dumps(data).encode()).topology


def host(name: str, ip: str, role: str = "server", **extra: Any) -> dict[str, Any]:
    return {"name": name, "docker": f"ssh://admin@{ip}", "advertise": ip, "role": role, **extra}


def cluster(servers: int = 3, clients: int = 2, **top: Any) -> dict[str, Any]:
    hosts = [host(f"server{i}", f"10.0.0.{i}") for i in range(1, servers + 1)]
    hosts += [host(f"client{i}", f"10.0.1.{i}", "client") for i in range(1, clients + 1)]
    return {"cluster": "shop", **top, "hosts": hosts}


def specs_by_key(fleet: DesiredFleet) -> dict[tuple[str, str], ContainerSpec]:
    return {(h.name, s.name): s for h in fleet.hosts for s in h.specs}


def the_spec(fleet: DesiredFleet, host_name: str, container: str) -> ContainerSpec:
    return specs_by_key(fleet)[(host_name, container)]


@pytest.fixture(scope="module")
def blog() -> DesiredFleet:
    return render(load_topology(BLOG.read_bytes()).topology)


# --- the blog recipe, flag for flag ------------------------------------------------------------------------


def test_blog_fleet_shape(blog: DesiredFleet) -> None:
    assert (blog.cluster, blog.datacenter) == ("blog", "dc1")
    assert [(h.name, [(s.name, s.role) for s in h.specs]) for h in blog.hosts] == [
        ("node1", [("consul", "server"), ("registrator", "registrator")]),
        ("node2", [("consul", "client"), ("registrator", "registrator")]),
    ]
    node1 = blog.host("node1")
    assert node1 is not None
    assert node1.endpoint.url == "tcp://192.168.99.100:2376"
    assert node1.endpoint.tls_ca == "/etc/consul-reconciler/ca.pem"
    node2 = blog.host("node2")
    assert node2 is not None
    assert (node2.endpoint.url, node2.endpoint.tls_ca) == ("ssh://root@192.168.99.101", None)
    assert blog.host("node3") is None


def test_blog_server_flags(blog: DesiredFleet) -> None:
    server = the_spec(blog, "node1", "consul")
    assert server.command == (
        "agent",
        "-server",
        "-bootstrap-expect=1",
        "-node=node1",
        "-datacenter=dc1",
        "-client",
        "0.0.0.0",
        "-advertise",
        "192.168.99.100",
        "-ui",
    )
    assert server.image == "hashicorp/consul:1.20"
    assert server.node == "node1"
    assert server.network_mode == "host"
    assert server.restart_policy == "always"
    assert server.mounts == (Mount("/data/consul", "/consul/data"),)
    assert server.ports == ()  # host networking publishes nothing
    assert server.env == ()
    assert server.secret_files == ()


def test_blog_client_joins_the_server(blog: DesiredFleet) -> None:
    client = the_spec(blog, "node2", "consul")
    assert client.command == (
        "agent",
        "-node=node2",
        "-datacenter=dc1",
        "-retry-join=192.168.99.100",
        "-client",
        "0.0.0.0",
        "-advertise",
        "192.168.99.101",
        "-ui",
    )
    assert not any(arg == "-server" or arg.startswith("-bootstrap-expect") for arg in client.command)
    assert client.role == "client"
    assert client.mounts == (Mount("/data/consul", "/consul/data"),)


@pytest.mark.parametrize(("host_name", "ip"), [("node1", "192.168.99.100"), ("node2", "192.168.99.101")])
def test_blog_registrator(blog: DesiredFleet, host_name: str, ip: str) -> None:
    reg = the_spec(blog, host_name, "registrator")
    assert reg.command == ("-internal", "-ip", ip, f"consul://{ip}:8500")
    assert reg.image == "gliderlabs/registrator:latest"
    assert reg.mounts == (Mount("/var/run/docker.sock", "/tmp/docker.sock"),)
    assert reg.network_mode == "host"
    assert reg.restart_policy == "always"
    assert reg.role == "registrator"
    assert reg.node == host_name
    assert reg.bootstrap_only == frozenset()


def test_registrator_mounts_the_socket_of_a_unix_endpoint_or_the_override() -> None:
    data = cluster(1, 0)
    data["hosts"][0]["docker"] = "unix:///run/user/1000/docker.sock"
    reg = the_spec(render(topology(data)), "server1", "registrator")
    assert reg.mounts == (Mount("/run/user/1000/docker.sock", "/tmp/docker.sock"),)
    data["hosts"][0]["docker_socket"] = "/var/run/docker.sock"
    reg = the_spec(render(topology(data)), "server1", "registrator")
    assert reg.mounts == (Mount("/var/run/docker.sock", "/tmp/docker.sock"),)


def test_registrator_settings_become_flags() -> None:
    data = cluster(
        1, 0, registrator={"internal": False, "resync": 30, "cleanup": True, "deregister": "always"}
    )
    data["registrator"]["tags"] = ["prod", "team=web"]
    reg = the_spec(render(topology(data)), "server1", "registrator")
    assert reg.command == (
        "-ip",
        "10.0.0.1",
        "-resync",
        "30",
        "-cleanup",
        "-deregister",
        "always",
        "-tags",
        "prod,team=web",
        "consul://10.0.0.1:8500",
    )


def test_registrator_reaches_a_specific_client_address() -> None:
    reg = the_spec(
        render(topology(cluster(1, 0, consul={"client_address": "127.0.0.1"}))), "server1", "registrator"
    )
    assert reg.command[-1] == "consul://127.0.0.1:8500"


def test_registrator_url_brackets_an_ipv6_address() -> None:
    data = {"cluster": "v6", "hosts": [host("node1", "fd00::1", docker="unix:///var/run/docker.sock")]}
    reg = the_spec(render(topology(data)), "node1", "registrator")
    assert reg.command == ("-internal", "-ip", "fd00::1", "consul://[fd00::1]:8500")


# --- several servers, options ----------------------------------------------------------------------------


def test_servers_join_each_other_and_clients_join_every_server() -> None:
    fleet = render(topology(cluster(3, 1)))
    for i in (1, 2, 3):
        command = the_spec(fleet, f"server{i}", "consul").command
        joins = [a for a in command if a.startswith("-retry-join=")]
        assert joins == [f"-retry-join=10.0.0.{j}" for j in (1, 2, 3) if j != i]
        assert "-bootstrap-expect=3" in command
    client = the_spec(fleet, "client1", "consul").command
    assert [a for a in client if a.startswith("-retry-join=")] == [
        "-retry-join=10.0.0.1",
        "-retry-join=10.0.0.2",
        "-retry-join=10.0.0.3",
    ]


def test_node_override_bind_extra_args_datacenter_and_no_ui() -> None:
    data = cluster(1, 0, datacenter="eu-west", consul={"ui": False, "extra_args": ["-log-level=warn"]})
    data["hosts"][0].update(node="consul-a", bind="10.0.0.1", data_dir="/srv/consul")
    spec = the_spec(render(topology(data)), "server1", "consul")
    assert spec.command == (
        "agent",
        "-server",
        "-bootstrap-expect=1",
        "-node=consul-a",
        "-datacenter=eu-west",
        "-bind=10.0.0.1",
        "-client",
        "0.0.0.0",
        "-advertise",
        "10.0.0.1",
        "-log-level=warn",
    )
    assert spec.node == "consul-a"
    assert spec.mounts == (Mount("/srv/consul", "/consul/data"),)


def test_container_names_come_from_the_topology() -> None:
    fleet = render(topology(cluster(1, 0, names={"agent": "consul-agent", "registrator": "reg"})))
    assert [s.name for s in fleet.hosts[0].specs] == ["consul-agent", "reg"]


def test_bridge_mode_publishes_the_consul_ports() -> None:
    data = cluster(1, 1)
    data["hosts"][0]["network"] = "bridge"
    fleet = render(topology(data))
    agent = the_spec(fleet, "server1", "consul")
    assert agent.network_mode == "bridge"
    published = {(p.container_port, p.protocol) for p in agent.ports}
    assert published == {
        (8300, "tcp"),
        (8301, "tcp"),
        (8301, "udp"),
        (8302, "tcp"),
        (8302, "udp"),
        (8500, "tcp"),
        (8600, "tcp"),
        (8600, "udp"),
    }
    assert len(agent.ports) == len(BRIDGE_PORTS) == 8
    assert all(p.host_port == p.container_port and p.host_ip is None for p in agent.ports)
    assert Port(8301, "udp", 8301).record() == "8301:8301/udp"
    # the registrator stays on the host network, and the other host is untouched
    assert the_spec(fleet, "server1", "registrator").network_mode == "host"
    assert the_spec(fleet, "client1", "consul").network_mode == "host"
    assert the_spec(fleet, "client1", "consul").ports == ()


def test_registrator_disabled_per_host() -> None:
    data = cluster(1, 2)
    data["hosts"][1]["registrator"] = False
    fleet = render(topology(data))
    assert [[s.name for s in h.specs] for h in fleet.hosts] == [
        ["consul", "registrator"],
        ["consul"],
        ["consul", "registrator"],
    ]


def test_registrator_disabled_globally_enabled_per_host() -> None:
    data = cluster(1, 2, registrator={"enabled": False})
    data["hosts"][2]["registrator"] = True
    fleet = render(topology(data))
    assert [[s.name for s in h.specs] for h in fleet.hosts] == [
        ["consul"],
        ["consul"],
        ["consul", "registrator"],
    ]


def test_gossip_key_is_a_secret_file_reference_never_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUL_GOSSIP_KEY", GOSSIP_32)
    fleet = render(topology(cluster(1, 1, consul={"encrypt": {"env": "CONSUL_GOSSIP_KEY"}})))
    for h in fleet.hosts:
        agent = the_spec(fleet, h.name, "consul")
        assert len(agent.secret_files) == 1
        secret = agent.secret_files[0]
        assert (secret.path, secret.key, secret.ref.env) == (
            "/consul/config/encrypt.json",
            "encrypt",
            "CONSUL_GOSSIP_KEY",
        )
        assert agent.record()["secret_files"] == [
            "/consul/config/encrypt.json:encrypt=<env:CONSUL_GOSSIP_KEY>"
        ]
        assert not any("encrypt" in arg for arg in agent.command)
        assert the_spec(fleet, h.name, "registrator").secret_files == ()
        for text in (repr(agent), json.dumps(agent.record()), " ".join(agent.command)):
            assert GOSSIP_32 not in text


def test_gossip_key_reference_is_part_of_the_hash() -> None:
    plain = the_spec(render(topology(cluster(1, 0))), "server1", "consul")
    by_env = the_spec(render(topology(cluster(1, 0, consul={"encrypt": {"env": "K"}}))), "server1", "consul")
    by_file = the_spec(
        render(topology(cluster(1, 0, consul={"encrypt": {"file": "/k"}}))), "server1", "consul"
    )
    assert len({plain.spec_hash(), by_env.spec_hash(), by_file.spec_hash()}) == 3


# --- the hash ----------------------------------------------------------------------------------------------


def hashes(data: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {key: spec.spec_hash() for key, spec in specs_by_key(render(topology(data))).items()}


def test_growing_servers_from_three_to_five_replaces_nothing_that_exists() -> None:
    three = cluster(3, 2)
    five = cluster(3, 2)
    five["hosts"][3:3] = [host("server4", "10.0.0.4"), host("server5", "10.0.0.5")]
    before, after = render(topology(three)), render(topology(five))
    old, new = specs_by_key(before), specs_by_key(after)
    assert set(new) - set(old) == {
        ("server4", "consul"),
        ("server4", "registrator"),
        ("server5", "consul"),
        ("server5", "registrator"),
    }
    for key, spec in old.items():
        assert new[key].spec_hash() == spec.spec_hash(), key
    # ...although the commands did change: the hash leaves out exactly the bootstrap-only flags
    assert "-bootstrap-expect=5" in new[("server1", "consul")].command
    assert "-bootstrap-expect=3" in old[("server1", "consul")].command
    assert "-retry-join=10.0.0.5" in new[("client1", "consul")].command
    assert "-retry-join=10.0.0.5" not in old[("client1", "consul")].command
    assert new[("server1", "consul")].steady_command() == old[("server1", "consul")].steady_command()
    assert new[("server1", "consul")].record() == old[("server1", "consul")].record()


def test_bootstrap_only_flags_are_exactly_join_and_expect() -> None:
    spec = the_spec(render(topology(cluster(3, 0))), "server2", "consul")
    assert spec.bootstrap_only == {"-bootstrap-expect=3", "-retry-join=10.0.0.1", "-retry-join=10.0.0.3"}
    assert spec.record()["command"] == list(spec.steady_command())
    assert not any(a.startswith(("-retry-join", "-bootstrap-expect")) for a in spec.steady_command())


def _change_image(d: dict[str, Any]) -> None:
    d["consul"] = {"image": "hashicorp/consul:1.21"}


def _change_ui(d: dict[str, Any]) -> None:
    d["consul"] = {"ui": False}


def _change_advertise(d: dict[str, Any]) -> None:
    d["hosts"][0]["advertise"] = "10.0.9.1"


def _change_data_dir(d: dict[str, Any]) -> None:
    d["hosts"][0]["data_dir"] = "/srv/other"


def _change_network(d: dict[str, Any]) -> None:
    d["hosts"][0]["network"] = "bridge"


def _change_node(d: dict[str, Any]) -> None:
    d["hosts"][0]["node"] = "renamed"


def _change_registrator_image(d: dict[str, Any]) -> None:
    d["registrator"] = {"image": "gliderlabs/registrator:v7"}


@pytest.mark.parametrize(
    ("change", "changed", "field"),
    [
        (_change_image, {(h, "consul") for h in ("server1", "server2", "server3", "client1")}, "image"),
        (_change_ui, {(h, "consul") for h in ("server1", "server2", "server3", "client1")}, "command"),
        # -advertise and registrator's -ip on server1; the joins that name it are bootstrap-only
        (_change_advertise, {("server1", "consul"), ("server1", "registrator")}, "command"),
        (_change_data_dir, {("server1", "consul")}, "mounts"),
        (_change_network, {("server1", "consul")}, "network_mode"),
        (_change_node, {("server1", "consul")}, "command"),
        (
            _change_registrator_image,
            {(h, "registrator") for h in ("server1", "server2", "server3", "client1")},
            "image",
        ),
    ],
    ids=lambda v: v.__name__.removeprefix("_change_") if callable(v) else "",
)
def test_what_matters_to_the_container_changes_its_hash(change: Any, changed: set[Any], field: str) -> None:
    base = cluster(3, 1)
    other = json.loads(json.dumps(base))
    change(other)
    old, new = specs_by_key(render(topology(base))), specs_by_key(render(topology(other)))
    differ = {key for key in old if old[key].spec_hash() != new[key].spec_hash()}
    assert differ == changed
    for key in differ:
        assert old[key].record()[field] != new[key].record()[field]


def test_hash_is_deterministic_within_a_process() -> None:
    data = cluster(3, 2, consul={"encrypt": {"env": "K"}, "extra_args": ["-log-level=warn"]})
    first = hashes(data)
    assert first == hashes(data)
    assert first == hashes(json.loads(json.dumps(data)))
    assert all(len(h) == 16 and int(h, 16) >= 0 for h in first.values())
    assert len(set(first.values())) == len(first)  # every container differs (node names, addresses)


def test_hash_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "import json, sys\n"
        "from desired_state.load import load_topology\n"
        "from desired_state.render import render\n"
        "fleet = render(load_topology(sys.stdin.buffer.read()).topology)\n"
        "print(json.dumps({f'{h.name}/{s.name}': s.spec_hash() for h in fleet.hosts for s in h.specs}))\n"
    )
    data = cluster(3, 2)
    here = {f"{h}/{c}": v for (h, c), v in hashes(data).items()}
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(data).encode(),
        capture_output=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert json.loads(done.stdout) == here


def test_record_is_json_ready_and_complete() -> None:
    spec = the_spec(render(topology(cluster(1, 0))), "server1", "consul")
    record = spec.record()
    assert set(record) == {
        "image",
        "command",
        "env",
        "mounts",
        "network_mode",
        "ports",
        "restart_policy",
        "secret_files",
    }
    assert json.loads(json.dumps(record)) == record
    assert record["mounts"] == ["/var/lib/consul-reconciler/data:/consul/data"]


def test_ipv6_join_targets_are_bracketed_as_consul_requires() -> None:
    data = {
        "cluster": "v6",
        "hosts": [
            host("node1", "fd00::1", docker="unix:///a.sock"),
            host("node2", "fd00::2", docker="unix:///b.sock"),
            host("node3", "127.0.10.3", docker="unix:///c.sock", role="client"),
        ],
    }
    fleet = render(topology(data))
    joins = [a for a in the_spec(fleet, "node3", "consul").command if a.startswith("-retry-join")]
    assert joins == ["-retry-join=[fd00::1]", "-retry-join=[fd00::2]"]
    assert "-retry-join=[fd00::2]" in the_spec(fleet, "node1", "consul").command
