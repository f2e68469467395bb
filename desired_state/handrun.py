"""A container started by hand, as Docker's inspect shows it, and what it does (pure): whether it is
a Consul agent or a Registrator, its flags read as Consul and Registrator read them, and what keeps it
from being taken over as it runs (:func:`differences`). Used by ``import`` (desired_state/takeover.py)
and by the plan's adoption of such containers.

The recognised agents are the blog recipe's and their kin: the official ``consul`` and
``hashicorp/consul`` images, and any image whose command is ``consul agent ...`` or ``agent ...``.
Registrators are ``gliderlabs/registrator`` and any container whose command takes a ``consul://`` URL."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from desired_state.render import CONSUL_DATA
from desired_state.spec import ContainerSpec

# Consul's boolean agent flags (agent/config/flags.go: the flags whose value is a *bool); every other
# flag takes a value, as "-flag=value" or "-flag value" (Go's flag package).
CONSUL_BOOL_FLAGS = frozenset(
    (
        *("auto-reload-config", "bootstrap", "dev", "disable-host-node-id", "disable-keyring-file"),
        *("enable-local-script-checks", "enable-script-checks", "log-json", "non-voting-server"),
        *("read-replica", "rejoin", "server", "syslog", "ui"),
    )
)
# Registrator's boolean flags (gliderlabs/registrator, registrator.go: flag.Bool).
REGISTRATOR_BOOL_FLAGS = frozenset(("internal", "cleanup", "explicit"))
CONSUL_IMAGES = ("consul", "hashicorp/consul")
REGISTRATOR_IMAGES = ("gliderlabs/registrator",)
# What the official image's entrypoint adds by itself (docker-entrypoint.sh): not the operator's flags
_ENTRYPOINT_FLAGS = {"data-dir": CONSUL_DATA, "config-dir": "/consul/config"}


@dataclass(frozen=True)
class FoundContainer:
    """What import reads of one container: the fields of Docker's inspect that a topology models."""

    host: str
    name: str
    id: str
    image: str
    command: tuple[str, ...]  # the arguments after the program (Config.Cmd, "consul" dropped)
    env: tuple[str, ...] = ()
    mounts: tuple[tuple[str, str], ...] = ()  # (source on the host, target in the container)
    network_mode: str = "default"
    ports: tuple[tuple[int, str, int], ...] = ()  # (container port, protocol, host port)
    read_only: tuple[str, ...] = ()  # targets of the mounts that are read-only
    host_ips: tuple[str, ...] = ()  # "ip:port/proto" of the ports published on one address only
    restart_policy: str = ""
    hostname: str = ""

    @classmethod
    def from_inspect(cls, host: str, attrs: Mapping[str, Any]) -> FoundContainer:
        config = attrs.get("Config") or {}
        host_config = attrs.get("HostConfig") or {}
        command = [str(a) for a in (config.get("Cmd") or [])]
        if command and command[0].rsplit("/", 1)[-1] == "consul":  # "consul agent ..." typed in full
            command = command[1:]
        binds = [m for m in attrs.get("Mounts") or [] if m.get("Type") in ("bind", None)]
        mounts = tuple((str(m.get("Source", "")), str(m.get("Destination", ""))) for m in binds)
        read_only = tuple(str(m.get("Destination", "")) for m in binds if m.get("RW") is False)
        ports: list[tuple[int, str, int]] = []
        host_ips: list[str] = []
        for key, bindings in sorted((host_config.get("PortBindings") or {}).items()):
            port, _, proto = str(key).partition("/")
            for binding in bindings or []:
                ports.append((int(port), proto or "tcp", int(binding.get("HostPort") or port)))
                if binding.get("HostIp") not in (None, "", "0.0.0.0", "::"):
                    host_ips.append(f"{binding['HostIp']}:{port}/{proto or 'tcp'}")
        return cls(
            host=host,
            name=str(attrs.get("Name", "")).lstrip("/"),
            id=str(attrs.get("Id", "")),
            image=str(config.get("Image") or attrs.get("Image") or ""),
            command=tuple(command),
            env=tuple(str(e) for e in config.get("Env") or []),
            mounts=mounts,
            network_mode=str(host_config.get("NetworkMode") or "default"),
            ports=tuple(ports),
            read_only=read_only,
            host_ips=tuple(host_ips),
            restart_policy=str((host_config.get("RestartPolicy") or {}).get("Name") or ""),
            hostname=str(config.get("Hostname") or ""),
        )

    @property
    def where(self) -> str:
        return f"{self.host}/{self.name}"


def image_repository(image: str) -> str:
    """``docker.io/hashicorp/consul:1.20@sha256:..`` -> ``hashicorp/consul``; ``library/`` dropped."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        name = name.removeprefix(prefix)
    return name.removeprefix("library/")


def is_consul_agent(found: FoundContainer) -> bool:
    return found.command[:1] == ("agent",) or (
        image_repository(found.image) in CONSUL_IMAGES and not _has_consul_url(found.command)
    )


def is_registrator(found: FoundContainer) -> bool:
    return image_repository(found.image) in REGISTRATOR_IMAGES or _has_consul_url(found.command)


def _has_consul_url(command: Sequence[str]) -> bool:
    return any(arg.startswith("consul://") for arg in command)


@dataclass(frozen=True)
class Flag:
    name: str
    value: str
    written: str  # as typed (a value that may be secret is never shown: see _shown)


def parse_flags(args: Sequence[str], booleans: frozenset[str]) -> tuple[list[Flag], list[str]]:
    """Go's flag package: ``-f``/``--f``, ``-f=v``, ``-f v`` (not for booleans); stops at the first
    argument that is not a flag. Returns the flags and the arguments left over."""
    flags: list[Flag] = []
    rest = list(args)
    while rest:
        arg = rest[0]
        if not arg.startswith("-") or arg in ("-", "--"):
            if arg == "--":
                rest.pop(0)
            break
        rest.pop(0)
        name, eq, value = arg.lstrip("-").partition("=")
        if eq:
            flags.append(Flag(name, value, arg))
        elif name in booleans:
            flags.append(Flag(name, "true", arg))
        elif rest:
            value = rest.pop(0)
            flags.append(Flag(name, value, f"{arg}={value}"))
        else:
            flags.append(Flag(name, "", arg))
    return flags, rest


def _truthy(value: str) -> bool:
    return value.lower() in ("1", "t", "true")


# The agent flags left out when a running agent is compared with its spec: what only matters while an
# agent joins (the spec leaves them out of its hash too) and what the official image's entrypoint adds
_JOIN_TIME_FLAGS = frozenset(("join", "retry-join", "rejoin", "bootstrap-expect"))


def _agent_flags(command: Sequence[str]) -> dict[str, list[str]]:
    flags, rest = parse_flags(list(command)[1:], CONSUL_BOOL_FLAGS)
    found: dict[str, list[str]] = {"datacenter": ["dc1"]}  # Consul's default, which render writes out
    for flag in flags:
        if flag.name in _JOIN_TIME_FLAGS or _ENTRYPOINT_FLAGS.get(flag.name) == flag.value:
            continue
        value = flag.value if flag.name not in CONSUL_BOOL_FLAGS else str(_truthy(flag.value)).lower()
        if flag.name == "datacenter":
            found["datacenter"] = [value]
        else:
            found.setdefault(flag.name, []).append("<hidden>" if flag.name == "encrypt" else value)
    if rest:
        found[""] = list(rest)
    return {name: sorted(values) for name, values in found.items()}


def differences(
    spec: ContainerSpec, found: FoundContainer, image_env: Iterable[str] = ()
) -> list[tuple[str, Any, Any]]:
    """What keeps ``found`` (a container started by hand) from being taken over as it runs: each field
    of the spec's record that differs, as (field, running, desired). Empty: it already does what the
    spec says, up to the documented normalisations of an agent's command line (join-time flags,
    ``-datacenter=dc1`` written out, flag order). ``image_env``: the image's own environment, which
    Docker lists among the container's."""
    found_diffs: list[tuple[str, Any, Any]] = []

    def differs(name: str, running: Any, desired: Any) -> None:
        if running != desired:
            found_diffs.append((name, running, desired))

    differs("image", found.image, spec.image)
    if spec.role in ("server", "client") and found.command[:1] == ("agent",):
        differs("command", _agent_flags(found.command), _agent_flags(spec.command))
    else:
        differs("command", list(found.command), list(spec.steady_command()))
    own_env = sorted(set(found.env) - set(image_env))
    differs("env", own_env, sorted(f"{k}={v}" for k, v in spec.env))
    mounts = sorted(f"{s}:{t}" + (":ro" if t in found.read_only else "") for s, t in found.mounts)
    differs("mounts", mounts, sorted(m.record() for m in (*spec.mounts, *spec.mounted_config)))
    mode = "bridge" if found.network_mode == "default" else found.network_mode
    differs("network_mode", mode, spec.network_mode)
    ports = sorted(f"{host}:{port}/{proto}" for port, proto, host in found.ports)
    differs("ports", ports, sorted(p.record() for p in spec.ports))
    if found.host_ips:
        differs("ports (address)", sorted(found.host_ips), [])
    differs("restart_policy", found.restart_policy or "no", spec.restart_policy)
    if spec.secret_files:
        files = [f.path for f in spec.secret_files]
        found_diffs.append(("secret_files", "unknown (a container started by hand)", files))
    return found_diffs
