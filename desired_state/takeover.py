"""Containers started by hand -> the topology that describes them (pure).

``consul-reconciler import`` reads each host's containers (the shell does that) and hands them here
as :class:`FoundContainer` values; :func:`import_topology` recognises the Consul agents and the
Registrators, reads their command lines as the agents do, and writes the topology document that
reproduces them, with what it had to change (notes) and what it could not map (each with its host
and container). Nothing here talks to Docker; no secret value is ever copied: a gossip key found on
a command line or in the environment becomes a *reference* to fill in, and the note says where it was.

Which containers are agents and Registrators, and how their flags read, is desired_state/handrun.py.

Documented normalisations (what :func:`desired_state.render.render` writes differently from the
hand-typed lines, without changing what the agent does): ``-join``/``-rejoin`` become one
``-retry-join`` per other server, ``-bootstrap-expect`` follows the number of servers, ``-datacenter``
and ``-node`` are always written, and flags come in the renderer's order.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from desired_state.handrun import (
    _ENTRYPOINT_FLAGS,
    CONSUL_BOOL_FLAGS,
    REGISTRATOR_BOOL_FLAGS,
    Flag,
    FoundContainer,
    _truthy,
    is_consul_agent,
    is_registrator,
    parse_flags,
)
from desired_state.model import DEFAULT_CONSUL_IMAGE, GOVERNED_FLAGS
from desired_state.render import BRIDGE_PORTS, CONSUL_DATA, HTTP_PORT, REGISTRATOR_SOCKET

GOSSIP_KEY_ENV = "CONSUL_GOSSIP_KEY"  # the reference an imported gossip key is given
CONSUL_CLIENT_DEFAULT = "127.0.0.1"  # Consul's client_addr when -client is not given


@dataclass(frozen=True)
class Unmapped:
    host: str
    container: str | None
    what: str

    def __str__(self) -> str:
        where = f"{self.host}/{self.container}" if self.container else self.host
        return f"{where}: {self.what}"


@dataclass
class ImportResult:
    document: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what the topology says differently, and why
    unmapped: list[Unmapped] = field(default_factory=list)  # what it cannot say at all
    adoptable: dict[str, list[str]] = field(default_factory=dict)  # host -> container names recognised

    def to_dict(self) -> dict[str, Any]:
        return {
            "topology": self.document,
            "notes": list(self.notes),
            "unmapped": [{"host": u.host, "container": u.container, "what": u.what} for u in self.unmapped],
            "containers": {host: list(names) for host, names in self.adoptable.items()},
        }


def _shown(flag: Flag) -> str:
    return f"-{flag.name}=<hidden>" if flag.name == "encrypt" else flag.written


@dataclass
class _Agent:
    found: FoundContainer
    server: bool = False
    node: str | None = None
    datacenter: str = "dc1"
    advertise: str | None = None
    bind: str | None = None
    client: str = CONSUL_CLIENT_DEFAULT
    ui: bool = False
    joins: list[str] = field(default_factory=list)
    expect: int | None = None
    encrypt_seen: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    data_dir: str | None = None


def _read_agent(found: FoundContainer, result: ImportResult) -> _Agent:
    agent = _Agent(found)
    flags, rest = parse_flags(found.command[1:], CONSUL_BOOL_FLAGS)
    if rest:
        result.unmapped.append(Unmapped(found.host, found.name, f"arguments after the flags: {rest}"))
    for flag in flags:
        name, value = flag.name, flag.value
        if name == "server":
            agent.server = _truthy(value)
        elif name == "node":
            agent.node = value
        elif name == "datacenter":
            agent.datacenter = value
        elif name == "advertise":
            agent.advertise = value
        elif name == "bind":
            agent.bind = value
        elif name == "client":
            agent.client = value
        elif name == "ui":
            agent.ui = _truthy(value)
        elif name in ("join", "retry-join"):
            agent.joins.append(value)
        elif name == "rejoin":
            pass  # the controller's agents always rejoin through -retry-join
        elif name == "bootstrap-expect":
            agent.expect = int(value) if value.isdigit() else None
        elif name == "encrypt":
            agent.encrypt_seen.append(f"the command line of {found.where} (-encrypt)")
        elif name in _ENTRYPOINT_FLAGS and value == _ENTRYPOINT_FLAGS[name]:
            pass  # what the official image's entrypoint sets anyway
        elif name == "data-dir":
            agent.data_dir = value
        elif name in GOVERNED_FLAGS:
            result.unmapped.append(
                Unmapped(found.host, found.name, f"{_shown(flag)}: {GOVERNED_FLAGS[name]}; not imported")
            )
        else:
            agent.extra.append(flag.written)
    for entry in found.env:
        key, _, value = entry.partition("=")
        if key == "CONSUL_LOCAL_CONFIG" and '"encrypt"' in value:
            agent.encrypt_seen.append(f"the environment of {found.where} (CONSUL_LOCAL_CONFIG)")
        elif key in ("CONSUL_ENCRYPT_KEY", "CONSUL_GOSSIP_KEY"):
            agent.encrypt_seen.append(f"the environment of {found.where} ({key})")
    return agent


def _common(values: Iterable[Any]) -> Any:
    """The value most agents have (the first such, in host order)."""
    counted = Counter(values)
    return counted.most_common(1)[0][0] if counted else None


def import_topology(
    cluster: str, hosts: Sequence[tuple[str, str]], found: Sequence[FoundContainer]
) -> ImportResult:
    """``hosts``: (name, docker URL) in the order given; ``found``: every container read on them."""
    result = ImportResult(document={})
    agent_containers: dict[str, FoundContainer] = {}
    registrators: dict[str, FoundContainer] = {}
    for item in found:
        if is_registrator(item):
            _one(registrators, item, "Registrator", result)
        elif is_consul_agent(item):
            _one(agent_containers, item, "Consul agent", result)
    agents = {host: _read_agent(item, result) for host, item in agent_containers.items()}
    for host, _url in hosts:
        if host not in agents:
            result.unmapped.append(Unmapped(host, None, "no Consul agent container found on this host"))
    ordered = [agents[h] for h, _ in hosts if h in agents]
    doc: dict[str, Any] = {"cluster": cluster}
    if not ordered:
        result.document = doc
        return result
    servers = [a for a in ordered if a.server]
    doc["datacenter"] = _cluster_value(ordered, "datacenter", lambda a: a.datacenter, result)
    doc["consul"] = _consul_settings(ordered, servers, result)
    doc["registrator"] = _registrator_settings(ordered, registrators, result)
    names = _names(ordered, registrators, result)
    if names:
        doc["names"] = names
    doc["hosts"] = [
        _host_entry(name, url, agents[name], registrators.get(name), doc, servers, result)
        for name, url in hosts
        if name in agents
    ]
    result.adoptable = {
        name: [c for c in (agents[name].found.name, registrators.get(name) and registrators[name].name) if c]
        for name, _ in hosts
        if name in agents
    }
    result.document = doc
    _server_notes(ordered, servers, result)
    return result


def _one(seen: dict[str, FoundContainer], item: FoundContainer, what: str, result: ImportResult) -> None:
    """Record ``item`` unless its host already has one; a second one is listed as unmapped."""
    if item.host in seen:
        first = seen[item.host].name
        result.unmapped.append(
            Unmapped(item.host, item.name, f"a second {what} on this host (besides {first}): not imported")
        )
    else:
        seen[item.host] = item


def _cluster_value(agents: Sequence[_Agent], what: str, get: Any, result: ImportResult) -> Any:
    value = _common(get(a) for a in agents)
    for agent in agents:
        if get(agent) != value:
            result.unmapped.append(
                Unmapped(
                    agent.found.host,
                    agent.found.name,
                    f"{what} {get(agent)!r} differs from the other agents' {value!r}; a topology has one",
                )
            )
    return value


def _consul_settings(
    agents: Sequence[_Agent], servers: Sequence[_Agent], result: ImportResult
) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    images = {a.found.host: a.found.image for a in agents}
    server_images = {a.found.image for a in agents if a.server}
    client_images = {a.found.image for a in agents if not a.server}
    if len(set(images.values())) == 1:
        settings["image"] = next(iter(images.values()))
    elif len(server_images) == 1 and len(client_images) == 1:
        settings["image"] = next(iter(server_images))
        settings["client_image"] = next(iter(client_images))
    else:
        settings["image"] = _common(images.values()) or DEFAULT_CONSUL_IMAGE
        for agent in agents:
            if agent.found.image != settings["image"]:
                result.unmapped.append(
                    Unmapped(
                        agent.found.host,
                        agent.found.name,
                        f"image {agent.found.image} differs from the other agents' {settings['image']} "
                        "(a topology has one image per role); it would be replaced",
                    )
                )
    settings["ui"] = bool(_cluster_value(agents, "-ui", lambda a: a.ui, result))
    settings["client_address"] = _common(a.client for a in agents)
    extra = _cluster_value(agents, "the flags not modelled", lambda a: tuple(a.extra), result)
    if extra:
        settings["extra_args"] = list(extra)
        result.notes.append(f"consul.extra_args: kept as typed: {' '.join(extra)}")
    sources = [where for a in agents for where in a.encrypt_seen]
    if sources:
        settings["encrypt"] = {"env": GOSSIP_KEY_ENV}
        result.notes.append(
            f"consul.encrypt: a gossip key was found in {', '.join(sources)}; it is not copied here: "
            f"export {GOSSIP_KEY_ENV} with that key where the controller runs (or change the reference)"
        )
    return settings


def _registrator_settings(
    agents: Sequence[_Agent], registrators: Mapping[str, FoundContainer], result: ImportResult
) -> dict[str, Any]:
    if not registrators:
        return {"enabled": False}
    read = {host: _read_registrator(found, result) for host, found in registrators.items()}
    settings: dict[str, Any] = {}
    first = next(iter(read.values()))
    for key in ("image", "internal", "resync", "cleanup", "deregister", "tags"):
        values = {host: r.get(key) for host, r in read.items()}
        value = _common(values.values())
        if value is not None and not (key == "cleanup" and value is False):  # False: the default
            settings[key] = list(value) if isinstance(value, tuple) else value
        for host, other in values.items():
            if other != value:
                result.unmapped.append(
                    Unmapped(
                        host,
                        registrators[host].name,
                        f"Registrator {key} {other!r} differs from the others' {value!r}; "
                        "a topology has one Registrator setting",
                    )
                )
    if "internal" not in settings:
        settings["internal"] = bool(first.get("internal"))
    if len(registrators) < len(agents):
        settings["enabled"] = True
    return settings


def _read_registrator(found: FoundContainer, result: ImportResult) -> dict[str, Any]:
    flags, rest = parse_flags(found.command, REGISTRATOR_BOOL_FLAGS)
    read: dict[str, Any] = {"image": found.image, "internal": False, "cleanup": False}
    for flag in flags:
        if flag.name == "internal":
            read["internal"] = _truthy(flag.value)
        elif flag.name == "cleanup":
            read["cleanup"] = _truthy(flag.value)
        elif flag.name == "resync" and flag.value.isdigit():
            read["resync"] = int(flag.value)
        elif flag.name == "deregister":
            read["deregister"] = flag.value
        elif flag.name == "tags":
            read["tags"] = tuple(t for t in flag.value.split(",") if t)
        elif flag.name == "ip":
            read["ip"] = flag.value
        else:
            result.unmapped.append(
                Unmapped(
                    found.host, found.name, f"Registrator flag {flag.written} is not modelled; not imported"
                )
            )
    urls = [a for a in rest if a.startswith("consul://")]
    read["url"] = urls[0] if urls else None
    for arg in rest:
        if arg not in urls:
            result.unmapped.append(
                Unmapped(found.host, found.name, f"Registrator argument {arg!r} not imported")
            )
    return read


def _names(
    agents: Sequence[_Agent], registrators: Mapping[str, FoundContainer], result: ImportResult
) -> dict[str, str]:
    names: dict[str, str] = {}
    agent_name = _cluster_value(agents, "container name", lambda a: a.found.name, result)
    if agent_name != "consul":
        names["agent"] = agent_name
    if registrators:
        reg_name = _common(r.name for r in registrators.values())
        for host, reg in registrators.items():
            if reg.name != reg_name:
                result.unmapped.append(
                    Unmapped(
                        host, reg.name, f"container name differs from the other Registrators' {reg_name!r}"
                    )
                )
        if reg_name != "registrator":
            names["registrator"] = reg_name
    return names


def _host_entry(
    name: str,
    url: str,
    agent: _Agent,
    registrator: FoundContainer | None,
    doc: Mapping[str, Any],
    servers: Sequence[_Agent],
    result: ImportResult,
) -> dict[str, Any]:
    found = agent.found
    entry: dict[str, Any] = {"name": name, "docker": url}
    if url.startswith("tcp://"):
        # It was read over plain HTTP; the topology says so, and validate warns until TLS is given.
        entry["tls"] = False
        result.notes.append(
            f"hosts[{name}].tls: {url} was read over plain HTTP; give tls: {{ca, cert, key}} (an engine "
            "run with --tlsverify) before trusting this network"
        )
    if agent.advertise is None:
        result.unmapped.append(
            Unmapped(
                name, found.name, "no -advertise: Consul picks a private address by itself; add -advertise"
            )
        )
    entry["advertise"] = agent.advertise or ""
    entry["role"] = "server" if agent.server else "client"
    node = agent.node or found.hostname or name
    if agent.node is None:
        result.notes.append(
            f"hosts[{name}].node: no -node on {found.where}; Consul used its host name {node!r}"
        )
    if node != name:
        entry["node"] = node
    if agent.bind:
        entry["bind"] = agent.bind
    if agent.client != doc["consul"]["client_address"]:
        entry["client_address"] = agent.client
    mode = found.network_mode
    if mode == "host":
        pass
    elif mode in ("default", "bridge"):
        entry["network"] = "bridge"
        published = sorted(found.ports)
        rendered = sorted((port, proto, port) for port, proto in BRIDGE_PORTS)
        if published != rendered:
            result.notes.append(
                f"hosts[{name}].network: bridge; {found.where} publishes {_ports(published)}, the topology "
                f"publishes {_ports(rendered)} (Consul's ports, udp too)"
            )
    else:
        result.unmapped.append(
            Unmapped(name, found.name, f"network mode {mode!r} (a topology has host or bridge)")
        )
    data = [source for source, target in found.mounts if target == (agent.data_dir or CONSUL_DATA)]
    if agent.data_dir not in (None, CONSUL_DATA):
        result.unmapped.append(
            Unmapped(
                name, found.name, f"-data-dir={agent.data_dir}: the topology keeps data in {CONSUL_DATA}"
            )
        )
    if data:
        entry["data_dir"] = data[0]
    else:
        result.notes.append(
            f"hosts[{name}].data_dir: {found.where} mounts no folder at {CONSUL_DATA}: its data lives in the "
            "container and a replacement starts empty; the topology gives it the default folder"
        )
    if found.restart_policy != "always":
        result.notes.append(
            f"{found.where}: restart policy {found.restart_policy or 'no'!r}; the topology's agents restart "
            "'always' (so it is adopted by replacement)"
        )
    registrators_on = doc["registrator"].get("enabled", True)
    if registrator is None and registrators_on:
        entry["registrator"] = False
    elif registrator is not None:
        _registrator_notes(name, agent, registrator, doc, entry, result)
    return entry


def _registrator_notes(
    name: str,
    agent: _Agent,
    registrator: FoundContainer,
    doc: Mapping[str, Any],
    entry: dict[str, Any],
    result: ImportResult,
) -> None:
    flags, rest = parse_flags(registrator.command, REGISTRATOR_BOOL_FLAGS)
    ip = next((f.value for f in flags if f.name == "ip"), None)
    if ip is not None and agent.advertise is not None and ip != agent.advertise:
        result.notes.append(
            f"{registrator.where}: -ip {ip} becomes the agent's advertise address {agent.advertise}"
        )
    client = entry.get("client_address") or doc["consul"]["client_address"]
    try:
        unspecified = ipaddress.ip_address(client).is_unspecified
    except ValueError:
        unspecified = False
    http_host = agent.advertise if unspecified else client
    wanted = f"consul://{http_host}:{HTTP_PORT}"
    url = next((a for a in rest if a.startswith("consul://")), None)
    if url is not None and url.rstrip("/") != wanted:
        result.notes.append(
            f"{registrator.where}: {url} becomes {wanted} (the agent's HTTP address on this host)"
        )
    socket = [source for source, target in registrator.mounts if target == REGISTRATOR_SOCKET]
    if socket and socket[0] != "/var/run/docker.sock":
        entry["docker_socket"] = socket[0]
    if registrator.network_mode != "host":
        result.notes.append(f"{registrator.where}: network {registrator.network_mode!r} becomes 'host'")


def _ports(ports: Iterable[tuple[int, str, int]]) -> str:
    return ", ".join(f"{host}:{port}/{proto}" for port, proto, host in ports) or "none"


def _server_notes(agents: Sequence[_Agent], servers: Sequence[_Agent], result: ImportResult) -> None:
    count = len(servers)
    addresses = {a.advertise for a in servers}
    for agent in servers:
        if agent.expect is not None and agent.expect != count:
            result.notes.append(
                f"{agent.found.where}: -bootstrap-expect={agent.expect} on one of {count} servers: each "
                f"server could elect itself alone and split the cluster; the topology sets "
                f"-bootstrap-expect={count}"
            )
    for agent in agents:
        strays = [j for j in agent.joins if j.strip("[]").rsplit(":", 1)[0] not in addresses]
        if strays:
            result.notes.append(
                f"{agent.found.where}: joins {', '.join(strays)}, not a server of this topology; the "
                "topology joins every agent to its servers"
            )
        if agent.joins:
            result.notes.append(
                f"{agent.found.where}: -join/-rejoin become -retry-join of every other server (documented)"
            )
