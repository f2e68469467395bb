"""Topology -> DesiredFleet: the containers each host should run (pure).

The output is what the blog recipe types by hand on every host, as data:

    docker run -d --net=host -v <data>:/consul/data --restart=always --name consul \\
        hashicorp/consul agent -server -bootstrap-expect=3 -node=node1 -retry-join=<peer> \\
        -client 0.0.0.0 -advertise <ip> -ui
    docker run -d --net=host -v /var/run/docker.sock:/tmp/docker.sock --restart=always \\
        --name registrator gliderlabs/registrator -internal -ip <ip> consul://<ip>:8500

``-bootstrap-expect`` and ``-retry-join`` only matter while an agent joins the
cluster; they are marked bootstrap-only so that adding servers does not replace
the agents already running.
"""

from __future__ import annotations

import functools
import ipaddress

from desired_state.model import Host, NetworkMode, Role, Topology
from desired_state.spec import (
    ContainerSpec,
    DesiredFleet,
    DesiredHost,
    Endpoint,
    Mount,
    Port,
    SecretFile,
)

CONSUL_DATA = "/consul/data"
CONSUL_CONFIG = "/consul/config"
REGISTRATOR_SOCKET = "/tmp/docker.sock"
HTTP_PORT = 8500

# The blog's published ports for bridge networking: server RPC, Serf LAN/WAN, HTTP, DNS.
BRIDGE_PORTS: tuple[tuple[int, str], ...] = (
    (8300, "tcp"),
    (8301, "tcp"),
    (8301, "udp"),
    (8302, "tcp"),
    (8302, "udp"),
    (8500, "tcp"),
    (8600, "tcp"),
    (8600, "udp"),
)


def render(topology: Topology) -> DesiredFleet:
    servers = topology.servers  # once: every agent's command names them all
    return DesiredFleet(
        cluster=topology.cluster,
        datacenter=topology.datacenter,
        hosts=tuple(_render_host(topology, host, servers) for host in topology.hosts),
        acknowledged=frozenset(topology.acknowledge),
    )


def _render_host(topology: Topology, host: Host, servers: tuple[Host, ...]) -> DesiredHost:
    specs = [agent_spec(topology, host, servers)]
    if topology.registrator_enabled(host):
        specs.append(registrator_spec(topology, host))
    endpoint = Endpoint(
        url=host.docker,
        timeout=host.timeout,
        tls_ca=host.tls.ca if host.tls else None,
        tls_cert=host.tls.cert if host.tls else None,
        tls_key=host.tls.key if host.tls else None,
    )
    return DesiredHost(name=host.name, endpoint=endpoint, specs=tuple(specs))


def agent_spec(topology: Topology, host: Host, servers: tuple[Host, ...] | None = None) -> ContainerSpec:
    """The Consul agent's container on ``host``. ``servers`` is ``topology.servers``, passed in by
    :func:`render` so that a fleet of N hosts is rendered in O(N), not O(N^2)."""
    if servers is None:
        servers = topology.servers
    consul = topology.consul
    is_server = host.role is Role.SERVER
    command: list[str] = ["agent"]
    bootstrap: set[str] = set()
    if is_server:
        expect = f"-bootstrap-expect={len(servers)}"
        command += ["-server", expect]
        bootstrap.add(expect)
    command += [f"-node={host.node_name}", f"-datacenter={topology.datacenter}"]
    for peer in servers:
        if peer.name != host.name:
            # Consul parses a join address as host[:port]: a literal IPv6 address needs its brackets
            target = f"[{peer.advertise}]" if ":" in peer.advertise else peer.advertise
            join = f"-retry-join={target}"
            command.append(join)
            bootstrap.add(join)
    if host.bind:
        command.append(f"-bind={host.bind}")
    command += ["-client", host.client_address or consul.client_address, "-advertise", host.advertise]
    if consul.ui:
        command.append("-ui")
    command += list(consul.extra_args)

    ports: tuple[Port, ...] = ()
    if host.network is NetworkMode.BRIDGE:
        ports = tuple(Port(port, proto, port) for port, proto in BRIDGE_PORTS)
    secret_files: tuple[SecretFile, ...] = ()
    if consul.encrypt is not None:
        secret_files = (SecretFile(f"{CONSUL_CONFIG}/encrypt.json", "encrypt", consul.encrypt),)
    return ContainerSpec(
        host=host.name,
        name=topology.names.agent,
        role=host.role.value,
        node=host.node_name,
        image=consul.image_for(host.role),
        command=tuple(command),
        bootstrap_only=frozenset(bootstrap),
        mounts=(Mount(host.data_dir, CONSUL_DATA),),
        agent_http=agent_http(topology, host),
        network_mode=host.network.value,
        ports=ports,
        secret_files=secret_files,
    )


def agent_http_address(topology: Topology, host: Host) -> str:
    """Where Registrator (on the host network) reaches the agent's HTTP API."""
    return _client_address(host.client_address or topology.consul.client_address) or host.advertise


@functools.lru_cache(maxsize=256)
def _client_address(text: str) -> str | None:
    """The client address in its normal form, or None if it is unspecified (0.0.0.0, ::). Cached:
    rendering asks three times per host, and most fleets have one client address for all."""
    client = ipaddress.ip_address(text)
    return None if client.is_unspecified else str(client)


def agent_http(topology: Topology, host: Host) -> str:
    """HOST:PORT of the agent's HTTP API on this host (what health gates and Registrator talk to)."""
    address = agent_http_address(topology, host)
    return f"[{address}]:{HTTP_PORT}" if ":" in address else f"{address}:{HTTP_PORT}"


def registrator_spec(topology: Topology, host: Host) -> ContainerSpec:
    settings = topology.registrator
    command: list[str] = []
    if settings.internal:
        command.append("-internal")
    command += ["-ip", host.advertise]
    if settings.resync is not None:
        command += ["-resync", str(settings.resync)]
    if settings.cleanup:
        command.append("-cleanup")
    if settings.deregister is not None:
        command += ["-deregister", settings.deregister]
    if settings.tags:
        command += ["-tags", ",".join(settings.tags)]
    http = agent_http(topology, host)
    command.append(f"consul://{http}")
    return ContainerSpec(
        host=host.name,
        name=topology.names.registrator,
        role="registrator",
        node=host.node_name,
        image=settings.image,
        command=tuple(command),
        mounts=(Mount(host.socket_path, REGISTRATOR_SOCKET),),
        agent_http=http,
        network_mode="host",
    )
