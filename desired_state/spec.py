"""ContainerSpec: what one container should be, as plain data plus a hash.

The reconciler treats a spec as opaque: it creates containers from it, labels
them with :meth:`ContainerSpec.spec_hash` and :meth:`ContainerSpec.record`, and
compares records field by field to explain drift. Which command-line values are
bootstrap-only (left out of the hash, so growing the cluster does not replace
running agents) is Consul knowledge and is decided by the renderer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from desired_state.model import SecretRef

HASH_VERSION = "1"


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False

    def record(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class Port:
    container_port: int
    protocol: str  # "tcp" | "udp"
    host_port: int
    host_ip: str | None = None

    def record(self) -> str:
        ip = f"{self.host_ip}:" if self.host_ip else ""
        return f"{ip}{self.host_port}:{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class SecretFile:
    """A small JSON file written into the container before it starts, holding
    one secret under ``key``; the spec carries the reference, never the value."""

    path: str
    key: str  # dotted for a nested key: "acl.tokens.agent" is {"acl": {"tokens": {"agent": ...}}}
    ref: SecretRef

    def record(self) -> str:
        return f"{self.path}:{self.key}=<{self.ref.describe()}>"

    def document(self, value: str) -> dict[str, Any]:
        """The file's JSON content holding ``value`` (the one place a value meets its key)."""
        *outer, last = self.key.split(".")
        content: dict[str, Any] = {last: value}
        for key in reversed(outer):
            content = {key: content}
        return content


@dataclass(frozen=True)
class ConfigFile:
    """A JSON file of agent configuration without secrets, written into the container before it starts
    like a secret file. Its content is hashed: an edit replaces the agent (through the gates)."""

    path: str
    content: str  # JSON (or HCL) text
    shown: bool = True  # False: an operator's file, which may hold secrets: its hash is recorded instead

    def record(self) -> str:
        if self.shown:
            return f"{self.path}={self.content}"
        return f"{self.path}:sha256={hashlib.sha256(self.content.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class ContainerSpec:
    host: str
    name: str
    role: str  # "server" | "client" | "registrator"
    node: str
    image: str
    command: tuple[str, ...]
    bootstrap_only: frozenset[str] = frozenset()  # exact args in ``command`` left out of the hash
    env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    network_mode: str = "host"
    ports: tuple[Port, ...] = ()
    restart_policy: str = "always"
    secret_files: tuple[SecretFile, ...] = field(default=())
    config_files: tuple[ConfigFile, ...] = field(default=())
    # the operator's files on the host, mounted read-only into the config folder (read through the
    # engine: their hash is recorded in the container when it is made, and compared on every pass)
    mounted_config: tuple[Mount, ...] = field(default=())
    agent_http: str | None = None  # HOST:PORT of the Consul agent's HTTP API on this host (not hashed)

    def steady_command(self) -> tuple[str, ...]:
        """The command without bootstrap-only arguments: what the hash covers."""
        return tuple(arg for arg in self.command if arg not in self.bootstrap_only)

    def record(self) -> dict[str, Any]:
        """The hashed view, as JSON-ready data (stored in a label, compared for drift).

        Contains no secret value: secret files appear as their reference.
        """
        record: dict[str, Any] = {
            "image": self.image,
            "command": list(self.steady_command()),
            "env": [f"{k}={v}" for k, v in self.env],
            "mounts": [m.record() for m in self.mounts],
            "network_mode": self.network_mode,
            "ports": [p.record() for p in self.ports],
            "restart_policy": self.restart_policy,
            "secret_files": [s.record() for s in self.secret_files],
        }
        if self.config_files or self.mounted_config:  # only when there are some: older hashes stay
            record["config_files"] = [c.record() for c in self.config_files] + [
                f"{m.target}:mounted from the host's {m.source}" for m in self.mounted_config
            ]
        return record

    def spec_hash(self) -> str:
        # Every pass compares every observed container's hash with this one: computed once per spec
        # (a frozen value; the rendered fleet is kept with its document from pass to pass).
        cached: str | None = self.__dict__.get("_spec_hash")
        if cached is None:
            canonical = json.dumps(self.record(), sort_keys=True, separators=(",", ":"))
            cached = hashlib.sha256(f"v{HASH_VERSION}:{canonical}".encode()).hexdigest()[:16]
            object.__setattr__(self, "_spec_hash", cached)
        return cached


@dataclass(frozen=True)
class Endpoint:
    """How to reach one host's Docker engine."""

    url: str
    timeout: float = 10.0
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "timeout": self.timeout,
            "tls_ca": self.tls_ca,
            "tls_cert": self.tls_cert,
            "tls_key": self.tls_key,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Endpoint:
        return cls(
            url=str(data["url"]),
            timeout=float(data.get("timeout", 10.0)),
            tls_ca=data.get("tls_ca"),
            tls_cert=data.get("tls_cert"),
            tls_key=data.get("tls_key"),
        )


@dataclass(frozen=True)
class DesiredHost:
    name: str
    endpoint: Endpoint
    specs: tuple[ContainerSpec, ...]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


NamedT = TypeVar("NamedT", bound=_Named)


def index_by_name(items: Iterable[NamedT]) -> dict[str, NamedT]:
    """The items by name; of two with one name the first wins, as a scan from the start finds it."""
    by_name: dict[str, NamedT] = {}
    for item in items:
        by_name.setdefault(item.name, item)
    return by_name


@dataclass(frozen=True)
class DesiredFleet:
    cluster: str
    datacenter: str
    hosts: tuple[DesiredHost, ...]
    acknowledged: frozenset[str] = frozenset()  # the dangerous changes the document intends
    _by_name: dict[str, DesiredHost] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Looked up by name for every observed host (`status`): a dict keeps that O(N), not O(N^2).
        object.__setattr__(self, "_by_name", index_by_name(self.hosts))

    def host(self, name: str) -> DesiredHost | None:
        return self._by_name.get(name)
