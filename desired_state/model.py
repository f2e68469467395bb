"""The desired topology of one Consul datacenter, as operators write it.

Strict pydantic v2 models: unknown fields are rejected, every value is checked
where it is declared, and cross-field rules (unique names, at least one server)
live on :class:`Topology`. Nothing here touches Docker, the network or the
environment: resolving secret references is :mod:`desired_state.secrets`.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

DEFAULT_CONSUL_IMAGE = "hashicorp/consul:1.20"
DEFAULT_REGISTRATOR_IMAGE = "gliderlabs/registrator:latest"
DOCKER_URL_SCHEMES = ("unix", "tcp", "ssh")

# Docker's own rule for container names, and a stricter one for Consul node names
# (Consul accepts DNS-compatible names; anything else breaks DNS lookups).
_CONTAINER_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"
_NODE_NAME = r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$"
_CLUSTER_ID = r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$"
_DATACENTER = r"^[a-zA-Z0-9_-]{1,64}$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

# An image reference: [registry[:port]/]path[:tag][@digest], lower-case path.
_IMAGE_REF = re.compile(
    r"^(?:(?P<registry>[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>[a-z0-9]+:[a-fA-F0-9]{32,}))?$"
)

ContainerName = Annotated[str, StringConstraints(pattern=_CONTAINER_NAME)]
NodeName = Annotated[str, StringConstraints(pattern=_NODE_NAME)]


class Role(StrEnum):
    SERVER = "server"
    CLIENT = "client"


class NetworkMode(StrEnum):
    HOST = "host"
    BRIDGE = "bridge"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


def check_image_reference(value: str) -> str:
    if not _IMAGE_REF.match(value):
        raise ValueError(
            f"{value!r} is not a valid image reference "
            "(expected [registry/]name[:tag][@sha256:digest], lower-case name)"
        )
    return value


def _check_absolute_path(value: str, what: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise ValueError(f"{value!r} is not an absolute path ({what} must start with '/')")
    if ".." in path.parts:
        raise ValueError(f"{value!r} contains '..' ({what} must not climb out of its folder)")
    if any(ch in value for ch in ("\0", "\n", ":")):
        raise ValueError(f"{value!r} contains a character Docker cannot mount (':', newline or NUL)")
    return value


class SecretRef(_Strict):
    """A secret given by reference: an environment variable or a file on the
    management host. The value itself never enters the topology, the plan,
    the audit log or a container's command line."""

    env: Annotated[str, StringConstraints(pattern=_ENV_NAME)] | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' (a variable name) or 'file' (a path)")
        return self

    @field_validator("file")
    @classmethod
    def _file_path(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the file path is empty")
        return value

    def describe(self) -> str:
        return f"env:{self.env}" if self.env is not None else f"file:{self.file}"


def _check_extra_args(values: tuple[str, ...]) -> tuple[str, ...]:
    for index, arg in enumerate(values):
        if not arg.startswith("-"):
            raise ValueError(f"item {index}: {arg!r} must be a flag starting with '-' (write '-flag=value')")
        if any(ch in arg for ch in ("\0", "\n")):
            raise ValueError(f"item {index}: {arg!r} contains a newline or NUL")
        flag = re.split(r"[=\s]", arg, maxsplit=1)[0]  # the value may be a secret: never echo it
        if flag.lstrip("-") in ("encrypt", "server", "bootstrap-expect", "node", "advertise"):
            raise ValueError(
                f"item {index}: {flag!r} is set by the topology itself; use its own field instead"
            )
    return values


class ConsulSettings(_Strict):
    image: str = DEFAULT_CONSUL_IMAGE
    server_image: str | None = Field(default=None, description="Overrides 'image' for servers")
    client_image: str | None = Field(default=None, description="Overrides 'image' for clients")
    ui: bool = True
    client_address: str = "0.0.0.0"
    encrypt: SecretRef | None = None
    extra_args: tuple[str, ...] = ()

    @field_validator("image", "server_image", "client_image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        return None if value is None else check_image_reference(value)

    def image_for(self, role: Role) -> str:
        override = self.server_image if role is Role.SERVER else self.client_image
        return override or self.image

    @field_validator("client_address")
    @classmethod
    def _client(cls, value: str) -> str:
        ipaddress.ip_address(_ip_or_raise(value))
        return value

    @field_validator("extra_args")
    @classmethod
    def _extra(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _check_extra_args(values)


class RegistratorSettings(_Strict):
    enabled: bool = True
    image: str = DEFAULT_REGISTRATOR_IMAGE
    internal: bool = True
    resync: Annotated[int, Field(ge=0, le=86400)] | None = None
    cleanup: bool = False
    deregister: Literal["always", "on-success"] | None = None
    tags: tuple[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:=/-]+$")], ...] = ()

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return check_image_reference(value)


class TLSFiles(_Strict):
    """Client-side TLS for a tcp:// Docker endpoint. Verification is always on."""

    ca: str
    cert: str
    key: str


class Host(_Strict):
    name: NodeName
    docker: str = Field(description="Docker endpoint: unix:///path, tcp://host:port or ssh://user@host")
    advertise: str
    role: Role
    node: NodeName | None = None
    bind: str | None = None
    client_address: str | None = Field(
        default=None, description="Overrides consul.client_address on this host"
    )
    network: NetworkMode = NetworkMode.HOST
    data_dir: str = "/var/lib/consul-reconciler/data"
    tls: TLSFiles | None = None
    timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    docker_socket: str | None = Field(
        default=None,
        description="The Docker socket on that host, mounted into Registrator "
        "(default: the unix:// endpoint's path, else /var/run/docker.sock)",
    )
    registrator: bool | None = None

    @field_validator("advertise", "bind", "client_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return str(ipaddress.ip_address(_ip_or_raise(value)))

    @field_validator("docker")
    @classmethod
    def _docker_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in DOCKER_URL_SCHEMES:
            raise ValueError(
                f"{value!r} has unsupported scheme {parts.scheme!r} "
                f"(supported: {', '.join(s + '://' for s in DOCKER_URL_SCHEMES)})"
            )
        if parts.scheme == "unix" and (parts.netloc or not parts.path.startswith("/")):
            raise ValueError(f"{value!r}: a unix:// endpoint needs an absolute socket path (unix:///path)")
        if parts.scheme in ("tcp", "ssh") and not parts.hostname:
            raise ValueError(f"{value!r}: a {parts.scheme}:// endpoint needs a host name or address")
        if parts.scheme == "tcp" and parts.port is None:
            raise ValueError(f"{value!r}: a tcp:// endpoint needs a port (tcp://host:2376)")
        return value

    @field_validator("data_dir", "docker_socket")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return None if value is None else _check_absolute_path(value, "a host path")

    @model_validator(mode="after")
    def _tls_only_for_tcp(self) -> Host:
        if self.tls is not None and not self.docker.startswith("tcp://"):
            raise ValueError("'tls' applies only to a tcp:// docker endpoint")
        return self

    @property
    def node_name(self) -> str:
        return self.node or self.name

    @property
    def socket_path(self) -> str:
        if self.docker_socket:
            return self.docker_socket
        if self.docker.startswith("unix://"):
            return urlsplit(self.docker).path
        return "/var/run/docker.sock"


class RolloutSettings(_Strict):
    """How disruptive changes roll out. The Consul health gates need each agent's HTTP API
    (port 8500 on its client address) to be reachable from the controller."""

    gates: bool = Field(
        default=True,
        description="Consul health gates around replacing or removing a server. Turn off only for "
        "agents without Consul's HTTP API: off, no leader/voter/autopilot check, no graceful leave "
        "(servers are stopped, their peers see them failed), no wait for a replacement to become a voter",
    )
    deadline: Annotated[float, Field(gt=0, le=86400)] = 300.0
    stabilization: Annotated[float, Field(ge=0, le=3600)] = 10.0
    max_parallel: Annotated[int, Field(ge=1, le=1000)] = 4
    agent_timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    leave_timeout: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=60.0,
        description="seconds a server's graceful leave may take: Consul answers PUT /v1/agent/leave only "
        "once the agent has left (leave_drain_time, 5 s by default, then its removal from the raft peers)",
    )


class Names(_Strict):
    """Container names on every host (the blog recipe's are 'consul' and 'registrator')."""

    agent: ContainerName = "consul"
    registrator: ContainerName = "registrator"

    @model_validator(mode="after")
    def _distinct(self) -> Names:
        if self.agent == self.registrator:
            raise ValueError(f"agent and registrator container names are both {self.agent!r}")
        return self


class Topology(_Strict):
    cluster: Annotated[str, StringConstraints(pattern=_CLUSTER_ID)] = Field(
        description="Cluster id: becomes the managed-by label; lower-case letters, digits, '.', '_', '-'"
    )
    datacenter: Annotated[str, StringConstraints(pattern=_DATACENTER)] = "dc1"
    consul: ConsulSettings = ConsulSettings()
    registrator: RegistratorSettings = RegistratorSettings()
    names: Names = Names()
    rollout: RolloutSettings = RolloutSettings()
    hosts: tuple[Host, ...]

    @model_validator(mode="after")
    def _fleet_rules(self) -> Topology:
        problems: list[str] = []
        if not self.hosts:
            raise ValueError("hosts: the topology has no hosts; at least one server is needed")
        _unique(problems, "name", [h.name for h in self.hosts])
        _unique(problems, "node", [h.node_name for h in self.hosts])
        _unique(problems, "advertise", [h.advertise for h in self.hosts])
        _unique(problems, "docker", [h.docker for h in self.hosts])
        if not any(h.role is Role.SERVER for h in self.hosts):
            problems.append("hosts: no host has role 'server'; a Consul datacenter needs at least one")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def servers(self) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.role is Role.SERVER)

    def registrator_enabled(self, host: Host) -> bool:
        return self.registrator.enabled if host.registrator is None else host.registrator

    def warnings(self) -> list[str]:
        found: list[str] = []
        count = len(self.servers)
        if count % 2 == 0:
            found.append(
                f"hosts: {count} servers is an even number; it tolerates no more failures than "
                f"{count - 1} (use an odd number: 1, 3 or 5)"
            )
        return found


def _unique(problems: list[str], field: str, values: list[str]) -> None:
    seen: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in seen:
            problems.append(f"hosts[{index}].{field}: {value!r} is already used by hosts[{seen[value]}]")
        else:
            seen[value] = index


def _ip_or_raise(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    return value
