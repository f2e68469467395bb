"""Import of a cluster started by hand (desired_state.takeover, desired_state.handrun): the blog
recipe's containers, as Docker's inspect shows them, become a topology that loads, and render gives
back their command lines up to the documented normalisations."""

from __future__ import annotations

from typing import Any

import yaml

from desired_state.handrun import (
    CONSUL_BOOL_FLAGS,
    FoundContainer,
    differences,
    image_repository,
    is_consul_agent,
    is_registrator,
    parse_flags,
)
from desired_state.load import load_topology
from desired_state.render import render
from desired_state.takeover import import_topology

SECRET = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="
HOSTS = [
    ("node1", "tcp://127.0.0.1:23751"),
    ("node2", "tcp://127.0.0.2:23751"),
    ("node3", "tcp://127.0.0.3:23751"),
]


def inspect(
    name: str,
    image: str,
    cmd: list[str],
    *,
    network: str = "host",
    binds: list[tuple[str, str]] = (),  # type: ignore[assignment]
    ports: dict[str, list[dict[str, str]]] | None = None,
    restart: str = "always",
    env: list[str] | None = None,
    hostname: str = "docker-host",
) -> dict[str, Any]:
    """The fields of GET /containers/{id}/json that import reads (Docker Engine API 1.41)."""
    return {
        "Id": f"{name}-0123456789abcdef",
        "Name": f"/{name}",
        "Config": {
            "Hostname": hostname,
            "Image": image,
            "Cmd": cmd,
            "Entrypoint": ["docker-entrypoint.sh"] if "consul" in image else ["/bin/registrator"],
            "Env": (env or []) + ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "HostConfig": {
            "NetworkMode": network,
            "PortBindings": ports or {},
            "RestartPolicy": {"Name": restart, "MaximumRetryCount": 0},
        },
        "Mounts": [
            {"Type": "bind", "Source": s, "Destination": d, "Mode": "", "RW": True, "Propagation": "rprivate"}
            for s, d in binds
        ],
    }


def blog_server(host: str, ip: str, expect: int = 1, **kw: Any) -> FoundContainer:
    cmd = ["agent", "-server", f"-bootstrap-expect={expect}", f"-node={host}", "-rejoin"]
    cmd += ["-client", "0.0.0.0", "-advertise", ip, "-ui"]
    attrs = inspect("consul", "consul:1.14.11", cmd, binds=[("/data/consul", "/consul/data")], **kw)
    return FoundContainer.from_inspect(host, attrs)


def blog_client(host: str, ip: str, server_ip: str, **kw: Any) -> FoundContainer:
    cmd = ["agent", f"-node={host}", f"-join={server_ip}", "-client", "0.0.0.0", "-advertise", ip, "-ui"]
    attrs = inspect("consul", "consul:1.14.11", cmd, binds=[("/data/consul", "/consul/data")], **kw)
    return FoundContainer.from_inspect(host, attrs)


def blog_registrator(host: str, ip: str) -> FoundContainer:
    cmd = ["-internal", "-ip", ip, f"consul://{ip}:8500"]
    attrs = inspect(
        "registrator",
        "gliderlabs/registrator:latest",
        cmd,
        binds=[("/var/run/docker.sock", "/tmp/docker.sock")],
    )
    return FoundContainer.from_inspect(host, attrs)


def test_go_flags_are_read_as_consul_reads_them() -> None:
    flags, rest = parse_flags(
        ["-server", "-client", "0.0.0.0", "--node=n1", "-ui=false", "x"], CONSUL_BOOL_FLAGS
    )
    assert [(f.name, f.value) for f in flags] == [
        ("server", "true"),
        ("client", "0.0.0.0"),
        ("node", "n1"),
        ("ui", "false"),
    ]
    assert rest == ["x"]


def test_agents_and_registrators_are_recognised_by_image_or_command() -> None:
    assert image_repository("docker.io/library/consul:1.14.11") == "consul"
    assert image_repository("hashicorp/consul@sha256:" + "a" * 64) == "hashicorp/consul"
    assert image_repository("registry:5000/team/consul:1") == "registry:5000/team/consul"
    own = FoundContainer.from_inspect(
        "h", inspect("c", "registry:5000/team/consul:1", ["consul", "agent", "-dev"])
    )
    assert own.command == ("agent", "-dev") and is_consul_agent(own)
    reg = FoundContainer.from_inspect("h", inspect("r", "my/registrator:2", ["consul://127.0.0.1:8500"]))
    assert is_registrator(reg) and not is_consul_agent(reg)
    other = FoundContainer.from_inspect("h", inspect("web", "nginx:1", ["nginx", "-g", "daemon off;"]))
    assert not is_consul_agent(other) and not is_registrator(other)


def test_the_blog_cluster_imports_to_a_topology_that_loads_and_renders_its_command_lines() -> None:
    found = [
        blog_server("node1", "127.0.0.1"),
        blog_registrator("node1", "127.0.0.1"),
        blog_client("node2", "127.0.0.2", "127.0.0.1"),
        blog_registrator("node2", "127.0.0.2"),
        blog_client("node3", "127.0.0.3", "127.0.0.1"),
        blog_registrator("node3", "127.0.0.3"),
        FoundContainer.from_inspect("node2", inspect("web", "nginx:1", ["nginx"])),
    ]
    result = import_topology("blog", HOSTS, found)
    assert result.unmapped == []
    loaded = load_topology(yaml.safe_dump(result.document, sort_keys=False).encode(), source="import")
    topology = loaded.topology
    assert [(h.name, h.role.value, h.advertise, h.data_dir) for h in topology.hosts] == [
        ("node1", "server", "127.0.0.1", "/data/consul"),
        ("node2", "client", "127.0.0.2", "/data/consul"),
        ("node3", "client", "127.0.0.3", "/data/consul"),
    ]
    assert topology.consul.image == "consul:1.14.11" and topology.consul.ui
    assert topology.consul.client_address == "0.0.0.0"
    assert topology.registrator.internal and topology.registrator.image == "gliderlabs/registrator:latest"
    fleet = render(topology)
    server = fleet.hosts[0].specs[0]
    # the hand-typed line, up to the documented normalisations (-datacenter written, -rejoin dropped)
    assert server.command == (
        "agent",
        "-server",
        "-bootstrap-expect=1",
        "-node=node1",
        "-datacenter=dc1",
        "-client",
        "0.0.0.0",
        "-advertise",
        "127.0.0.1",
        "-ui",
    )
    client = fleet.hosts[1].specs[0]
    assert "-retry-join=127.0.0.1" in client.command and "-server" not in client.command
    assert fleet.hosts[1].specs[1].command == ("-internal", "-ip", "127.0.0.2", "consul://127.0.0.2:8500")
    assert [m.record() for m in fleet.hosts[2].specs[1].mounts] == ["/var/run/docker.sock:/tmp/docker.sock"]
    assert result.adoptable == {h: ["consul", "registrator"] for h, _ in HOSTS}
    assert any("-join/-rejoin become -retry-join" in n for n in result.notes)


def test_bootstrap_expect_one_on_one_of_three_servers_is_a_note_with_the_fix() -> None:
    found = [blog_server(h, f"127.0.0.{i}") for i, (h, _) in enumerate(HOSTS, 1)]
    result = import_topology("three", HOSTS, found)
    warned = [n for n in result.notes if "-bootstrap-expect=1 on one of 3 servers" in n]
    assert len(warned) == 3 and all("sets -bootstrap-expect=3" in n for n in warned)
    topology = load_topology(yaml.safe_dump(result.document).encode(), source="import").topology
    assert "-bootstrap-expect=3" in render(topology).hosts[0].specs[0].command


def test_bridge_networking_is_imported_with_the_ports_it_published() -> None:
    ports = {p: [{"HostIp": "", "HostPort": p.split("/")[0]}] for p in ("8500/tcp", "8300/tcp", "8600/tcp")}
    found = [blog_server("node1", "127.0.0.1", network="bridge", ports=ports, hostname="node1")]
    result = import_topology("b", HOSTS[:1], found)
    assert result.document["hosts"][0]["network"] == "bridge"
    assert any("publishes 8300:8300/tcp, 8500:8500/tcp, 8600:8600/tcp" in n for n in result.notes)


def test_a_gossip_key_is_a_reference_and_its_value_is_never_copied() -> None:
    server = blog_server("node1", "127.0.0.1", env=[f'CONSUL_LOCAL_CONFIG={{"encrypt": "{SECRET}"}}'])
    typed = FoundContainer.from_inspect(
        "node2",
        inspect("consul", "consul:1.14.11", ["agent", f"-encrypt={SECRET}", "-advertise", "127.0.0.2"]),
    )
    result = import_topology("k", HOSTS[:2], [server, typed])
    assert result.document["consul"]["encrypt"] == {"env": "CONSUL_GOSSIP_KEY"}
    text = repr(result.to_dict())
    assert SECRET not in text
    note = next(n for n in result.notes if n.startswith("consul.encrypt"))
    assert "node1/consul (CONSUL_LOCAL_CONFIG)" in note and "node2/consul (-encrypt)" in note


def test_what_cannot_be_mapped_is_listed_with_host_and_container() -> None:
    odd = FoundContainer.from_inspect(
        "node2",
        inspect("consul", "consul:1.14.11", ["agent", "-advertise", "127.0.0.2", "-dev"], network="none"),
    )
    lost = [blog_server("node1", "127.0.0.1"), odd]
    result = import_topology("u", HOSTS, lost)
    text = [str(u) for u in result.unmapped]
    assert "node2/consul: -dev: a dev agent keeps no data; use a real agent; not imported" in text
    assert "node2/consul: network mode 'none' (a topology has host or bridge)" in text
    assert "node3: no Consul agent container found on this host" in text
    assert any(t.startswith("node2/consul: -ui False differs") for t in text)


def _imported(found: list[FoundContainer], hosts: list[tuple[str, str]]) -> Any:
    result = import_topology("blog", hosts, found)
    return render(load_topology(yaml.safe_dump(result.document).encode(), source="import").topology)


IMAGE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def test_the_blogs_containers_match_the_imported_specs_so_they_are_taken_over_in_place() -> None:
    found = [blog_server("node1", "127.0.0.1"), blog_registrator("node1", "127.0.0.1")]
    found += [blog_client("node2", "127.0.0.2", "127.0.0.1"), blog_registrator("node2", "127.0.0.2")]
    fleet = _imported(found, HOSTS[:2])
    for item in found:
        spec = next(s for s in fleet.host(item.host).specs if s.name == item.name)
        assert differences(spec, item, IMAGE_ENV) == [], item.where


def test_each_field_that_keeps_a_container_from_being_taken_over_is_named() -> None:
    server = blog_server("node1", "127.0.0.1")
    spec = _imported([server], HOSTS[:1]).hosts[0].specs[0]
    moved = FoundContainer.from_inspect(
        "node1",
        inspect(
            "consul",
            "consul:1.15.0",
            [
                "agent",
                "-server",
                "-node=node1",
                "-client",
                "0.0.0.0",
                "-advertise",
                "127.0.0.1",
                "-log-level=debug",
            ],
            binds=[("/data/consul", "/consul/data")],
            restart="unless-stopped",
            env=["TZ=UTC"],
        ),
    )
    found = {name: (running, desired) for name, running, desired in differences(spec, moved, IMAGE_ENV)}
    assert set(found) == {"image", "command", "env", "restart_policy"}
    assert found["image"] == ("consul:1.15.0", "consul:1.14.11")
    assert found["restart_policy"] == ("unless-stopped", "always")
    assert found["env"] == (["TZ=UTC"], [])
    running, desired = found["command"]
    assert running["log-level"] == ["debug"] and "ui" in desired and "ui" not in running
    # the join-time flags and the datacenter Consul defaults to are no difference
    assert "rejoin" not in desired and running["datacenter"] == desired["datacenter"] == ["dc1"]
