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
import json
from collections.abc import Mapping

from desired_state.model import AgentACL, AgentTLS, Host, NetworkMode, Role, Topology
from desired_state.spec import (
    ConfigFile,
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
CONSUL_TLS = "/consul/tls"  # where the hosts' CA, certificate and key are mounted (read-only)
TLS_FILES = {"ca_file": "ca.pem", "cert_file": "agent.pem", "key_file": "agent-key.pem"}
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


def render(topology: Topology, files: Mapping[str, str] | None = None) -> DesiredFleet:
    """``files``: the content of each file ``consul.config_files`` names (read by the caller:
    desired_state.configfiles)."""
    servers = topology.servers  # once: every agent's command names them all
    extra = operator_config_files(topology, files or {})
    mounted = mounted_config_files(topology)  # the same on every host
    return DesiredFleet(
        cluster=topology.cluster,
        datacenter=topology.datacenter,
        hosts=tuple(_render_host(topology, host, servers, extra, mounted) for host in topology.hosts),
        acknowledged=frozenset(topology.acknowledge),
    )


def operator_config_files(topology: Topology, files: Mapping[str, str]) -> tuple[ConfigFile, ...]:
    """The files copied from the management host (``file``), with their contents."""
    made = []
    for ref in topology.consul.config_files:
        if ref.file is None:
            continue
        if ref.file not in files:
            raise ValueError(f"consul.config_files: {ref.file} was not read before rendering")
        made.append(ConfigFile(f"{CONSUL_CONFIG}/{ref.target}", files[ref.file], shown=False))
    return tuple(made)


def mounted_config_files(topology: Topology) -> tuple[Mount, ...]:
    """The files on each host (``host_path``), mounted read-only into the agent's config folder."""
    return tuple(
        Mount(ref.host_path, f"{CONSUL_CONFIG}/{ref.target}", read_only=True)
        for ref in topology.consul.config_files
        if ref.host_path is not None
    )


def _render_host(
    topology: Topology,
    host: Host,
    servers: tuple[Host, ...],
    extra: tuple[ConfigFile, ...] = (),
    mounted: tuple[Mount, ...] | None = None,
) -> DesiredHost:
    specs = [agent_spec(topology, host, servers, extra, mounted)]
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


def agent_spec(
    topology: Topology,
    host: Host,
    servers: tuple[Host, ...] | None = None,
    extra: tuple[ConfigFile, ...] = (),
    mounted: tuple[Mount, ...] | None = None,
) -> ContainerSpec:
    """The Consul agent's container on ``host``. ``servers`` is ``topology.servers`` and ``mounted``
    ``mounted_config_files(topology)``, passed in by :func:`render` so that they are worked out once
    for a fleet, not once per host."""
    if servers is None:
        servers = topology.servers
    if mounted is None:
        mounted = mounted_config_files(topology)
    consul = topology.consul
    is_server = host.role is Role.SERVER
    command: list[str] = ["agent"]
    bootstrap: set[str] = set()
    if is_server:
        expect = f"-bootstrap-expect={len(servers)}"
        command += ["-server", expect]
        bootstrap.add(expect)
    command += [f"-node={host.node_name}", f"-datacenter={topology.datacenter}"]
    joins = _joins(tuple((peer.name, peer.advertise) for peer in servers))
    for name, join in joins:
        if name != host.name:
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
    config_files: tuple[ConfigFile, ...] = ()
    if consul.acl is not None:
        config_files, tokens = acl_files(consul.acl, is_server)
        secret_files += tokens
    mounts: tuple[Mount, ...] = (Mount(host.data_dir, CONSUL_DATA),)
    if consul.tls is not None:
        config_files += (tls_file(consul.tls),)
        mounts += tls_mounts(consul.tls)
    config_files += extra
    return ContainerSpec(
        host=host.name,
        name=topology.names.agent,
        role=host.role.value,
        node=host.node_name,
        image=consul.image_for(host.role),
        command=tuple(command),
        bootstrap_only=frozenset(bootstrap),
        mounts=mounts,
        agent_http=agent_http(topology, host),
        network_mode=host.network.value,
        ports=ports,
        secret_files=secret_files,
        config_files=config_files,
        mounted_config=mounted,
    )


@functools.lru_cache(maxsize=64)
def _joins(servers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """(server name, its ``-retry-join`` argument) for each server: the same for every host of a fleet,
    so made once. Consul parses a join address as host[:port]: a literal IPv6 address needs brackets."""
    return tuple(
        (name, f"-retry-join=[{address}]" if ":" in address else f"-retry-join={address}")
        for name, address in servers
    )


def acl_files(acl: AgentACL, is_server: bool) -> tuple[tuple[ConfigFile, ...], tuple[SecretFile, ...]]:
    """The agent's ACL configuration: the settings as a plain file, each token as a secret file of its
    own (Consul merges the files of its config folder, acl.tokens into acl)."""
    settings = {
        "acl": {
            "enabled": True,
            "default_policy": acl.default_policy,
            "down_policy": acl.down_policy,
            "enable_token_persistence": acl.enable_token_persistence,
        }
    }
    config = (ConfigFile(f"{CONSUL_CONFIG}/acl.json", json.dumps(settings, sort_keys=True)),)
    tokens: list[SecretFile] = []
    if acl.agent_token is not None:
        tokens.append(
            SecretFile(f"{CONSUL_CONFIG}/acl-agent-token.json", "acl.tokens.agent", acl.agent_token)
        )
    if acl.default_token is not None:
        tokens.append(
            SecretFile(f"{CONSUL_CONFIG}/acl-default-token.json", "acl.tokens.default", acl.default_token)
        )
    if is_server and acl.initial_management_token is not None:
        tokens.append(
            SecretFile(
                f"{CONSUL_CONFIG}/acl-initial-management.json",
                "acl.tokens.initial_management",
                acl.initial_management_token,
            )
        )
    return config, tuple(tokens)


def tls_file(tls: AgentTLS) -> ConfigFile:
    """Consul's TLS settings (the ``tls`` stanza of Consul 1.12 and later) and its ports: HTTPS on,
    plain HTTP off unless asked for."""
    defaults: dict[str, object] = {key: f"{CONSUL_TLS}/{name}" for key, name in TLS_FILES.items()}
    defaults |= {"verify_incoming": tls.verify_incoming, "verify_outgoing": tls.verify_outgoing}
    settings = {
        "tls": {"defaults": defaults, "internal_rpc": {"verify_server_hostname": tls.verify_server_hostname}},
        "ports": {"https": tls.https_port, "http": HTTP_PORT if tls.http else -1},
    }
    return ConfigFile(f"{CONSUL_CONFIG}/tls.json", json.dumps(settings, sort_keys=True))


def tls_mounts(tls: AgentTLS) -> tuple[Mount, ...]:
    return tuple(
        Mount(getattr(tls, key), f"{CONSUL_TLS}/{name}", read_only=True) for key, name in TLS_FILES.items()
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
    """The agent's HTTP API on this host (what health gates and Registrator talk to): ``HOST:PORT``,
    or ``https://HOST:PORT`` when the agents serve HTTPS (``consul.tls``)."""
    address = agent_http_address(topology, host)
    address = f"[{address}]" if ":" in address else address
    tls = topology.consul.tls
    return f"{address}:{HTTP_PORT}" if tls is None else f"https://{address}:{tls.https_port}"


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
    mounts: tuple[Mount, ...] = (Mount(host.socket_path, REGISTRATOR_SOCKET),)
    env: tuple[tuple[str, str], ...] = ()
    tls = topology.consul.tls
    if tls is None:
        command.append(f"consul://{http}")
    else:
        # Registrator's consul-tls:// backend reads its CA and client certificate from these variables
        command.append(f"consul-tls://{http.removeprefix('https://')}")
        mounts += tls_mounts(tls)
        env = (
            ("CONSUL_CACERT", f"{CONSUL_TLS}/ca.pem"),
            ("CONSUL_TLSCERT", f"{CONSUL_TLS}/agent.pem"),
            ("CONSUL_TLSKEY", f"{CONSUL_TLS}/agent-key.pem"),
        )
    return ContainerSpec(
        host=host.name,
        name=topology.names.registrator,
        role="registrator",
        node=host.node_name,
        image=settings.image,
        command=tuple(command),
        mounts=mounts,
        env=env,
        agent_http=http,
        network_mode="host",
    )
