"""The desired topology of one Consul datacenter, as operators write it.

Strict pydantic v2 models: unknown fields are rejected, every value is checked
where it is declared, and cross-field rules (unique names, at least one server)
live on :class:`Topology`. Nothing here touches Docker, the network or the
environment: resolving secret references is :mod:`desired_state.secrets`. The
building blocks are in :mod:`desired_state.fields`, the ``consul`` section in
:mod:`desired_state.agent`; both are re-exported here.
"""

from __future__ import annotations

import functools
import re
from pathlib import PurePosixPath
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

from desired_state.agent import GOVERNED_FLAGS as GOVERNED_FLAGS
from desired_state.agent import RESERVED_CONFIG_NAMES as RESERVED_CONFIG_NAMES
from desired_state.agent import AgentACL as AgentACL
from desired_state.agent import AgentConfigFile as AgentConfigFile
from desired_state.agent import AgentTLS as AgentTLS
from desired_state.agent import ConsulSettings
from desired_state.fields import (
    _CLUSTER_ID,
    _DATACENTER,
    _NODE_NAME,
    DEFAULT_REGISTRATOR_IMAGE,
    DOCKER_URL_SCHEMES,
    Bool,
    ContainerName,
    Int,
    NodeName,
    Number,
    _check_absolute_path,
    _check_data_dir,
    _Strict,
    _unicast,
    check_image_reference,
    parse_ip,
)
from desired_state.fields import DEFAULT_CONSUL_IMAGE as DEFAULT_CONSUL_IMAGE
from desired_state.fields import NetworkMode as NetworkMode
from desired_state.fields import Role as Role
from desired_state.fields import SecretRef as SecretRef

# Whitespace (str.isspace(), as \s is for a str pattern) or an ASCII control character
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")



# A host's docker URL is split when it is checked, for its engine's normal form and for its socket's
# path: three times for each host of a document. Kept for as many hosts as a large fleet has, the split
# is done once (it was a tenth of the time a 10,000-host document takes from its bytes to the plan).
_split_url = functools.lru_cache(maxsize=16_384)(urlsplit)

class RegistratorSettings(_Strict):
    enabled: Bool = True
    image: str = DEFAULT_REGISTRATOR_IMAGE
    internal: Bool = True
    resync: Annotated[Int, Field(ge=0, le=86400)] | None = None
    cleanup: Bool = False
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


# ``tls:`` is either the files or ``false`` (plain HTTP, asked for knowingly). The discriminator picks the
# one the value means, so an error names that one only (``hosts[0].tls.kye: unknown field``), not
# both. The tags never show in a path (desired_state/load.py drops them).
TLS_FILES_TAG, TLS_OFF_TAG = "tls-files", "tls-off"
DockerTLS = Annotated[
    Annotated[TLSFiles, Tag(TLS_FILES_TAG)] | Annotated[Literal[False], Tag(TLS_OFF_TAG)],
    Discriminator(lambda value: TLS_OFF_TAG if value is False else TLS_FILES_TAG),
]


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
    tls: DockerTLS | None = Field(
        default=None,
        description="TLS for a tcp:// endpoint: {ca, cert, key}; `false` to accept plain HTTP (warned)",
    )
    timeout: Annotated[Number, Field(gt=0, le=600)] = 10.0
    docker_socket: str | None = Field(
        default=None,
        description="The Docker socket on that host, mounted into Registrator "
        "(default: the unix:// endpoint's path, else /var/run/docker.sock)",
    )
    registrator: Bool | None = None

    @field_validator("advertise")
    @classmethod
    def _advertise(cls, value: str) -> str:
        address = parse_ip(value)
        if address.is_unspecified:
            raise ValueError(
                f"{value!r} is no address the other agents can reach (advertise one of this host's)"
            )
        _unicast(value, address)
        return str(address)

    @field_validator("bind", "client_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        address = parse_ip(value)
        _unicast(value, address)
        return str(address)

    @field_validator("docker")
    @classmethod
    def _docker_url(cls, value: str) -> str:
        if _SPACE_OR_CONTROL.search(value):
            raise ValueError(f"{value!r} contains whitespace or a control character")
        parts = _split_url(value)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{value!r}: the port is not a number from 1 to 65535") from None
        if port == 0:
            raise ValueError(f"{value!r}: port 0 is no port to connect to")
        if parts.scheme not in DOCKER_URL_SCHEMES:
            raise ValueError(
                f"{value!r} has unsupported scheme {parts.scheme!r} "
                f"(supported: {', '.join(s + '://' for s in DOCKER_URL_SCHEMES)})"
            )
        if parts.scheme == "unix" and (parts.netloc or not parts.path.startswith("/")):
            raise ValueError(f"{value!r}: a unix:// endpoint needs an absolute socket path (unix:///path)")
        if parts.scheme in ("tcp", "ssh") and not parts.hostname:
            raise ValueError(f"{value!r}: a {parts.scheme}:// endpoint needs a host name or address")
        if parts.scheme == "tcp" and port is None:
            raise ValueError(f"{value!r}: a tcp:// endpoint needs a port (tcp://host:2376)")
        return value

    @field_validator("data_dir", "docker_socket")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return None if value is None else _check_absolute_path(value, "a host path")

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: str) -> str:
        return _check_data_dir(value)

    @model_validator(mode="after")
    def _tls_only_for_tcp(self) -> Host:
        tcp = self.docker.startswith("tcp://")
        if self.tls is not None and not tcp:
            raise ValueError("'tls' applies only to a tcp:// docker endpoint")
        if tcp and self.tls is None:
            raise ValueError(
                f"{self.docker} without 'tls' would be plain HTTP: anyone who can reach that port "
                "controls the engine (root on its host). Give tls: {ca, cert, key} (the engine run with "
                "--tlsverify), or tls: false to accept plain HTTP knowingly"
            )
        return self

    @property
    def plain_tcp(self) -> bool:
        """A tcp:// endpoint without TLS, accepted with ``tls: false`` (always warned about)."""
        return self.tls is False

    @property
    def node_name(self) -> str:
        return self.node or self.name

    @property
    def engine(self) -> str:
        """The Docker endpoint in one normal form, to tell whether two hosts name the same engine:
        scheme and host lower-case, the default ssh port written out, repeated and trailing '/' dropped
        from a socket path."""
        parts = _split_url(self.docker)
        scheme = parts.scheme.lower()
        if scheme == "unix":
            return "unix://" + str(PurePosixPath(re.sub("/+", "/", parts.path)))
        host = (parts.hostname or "").lower()
        port = parts.port or (22 if scheme == "ssh" else None)
        user = f"{parts.username}@" if parts.username else ""
        return f"{scheme}://{user}{host}:{port}"

    @property
    def socket_path(self) -> str:
        if self.docker_socket:
            return self.docker_socket
        if self.docker.startswith("unix://"):
            return _split_url(self.docker).path
        return "/var/run/docker.sock"


class RolloutSettings(_Strict):
    """How disruptive changes roll out. The Consul health gates need each agent's HTTP API
    (port 8500 on its client address) to be reachable from the controller."""

    gates: Bool = Field(
        default=True,
        description="Consul health gates around replacing or removing a server. Turn off only for "
        "agents without Consul's HTTP API: off, no leader/voter/autopilot check, no graceful leave "
        "(servers are stopped, their peers see them failed), no wait for a replacement to become a voter",
    )
    deadline: Annotated[Number, Field(gt=0, le=86400)] = 300.0
    stabilization: Annotated[Number, Field(ge=0, le=3600)] = 10.0
    max_parallel: Annotated[Int, Field(ge=1, le=1000)] = 4
    agent_timeout: Annotated[Number, Field(gt=0, le=600)] = 30.0
    allow_downgrade: Bool = Field(
        default=False,
        description="let servers go to an older Consul version than they run (refused by default: a "
        "server may not read the state a newer version wrote)",
    )
    leave_timeout: Annotated[Number, Field(gt=0, le=3600)] = Field(
        default=60.0,
        description="seconds a server's graceful leave may take: Consul answers PUT /v1/agent/leave only "
        "once the agent has left (leave_drain_time, 5 s by default, then its removal from the raft peers)",
    )


def _check_snapshot_dir(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise ValueError(f"{value!r} is not an absolute path (the snapshot folder must start with '/')")
    if ".." in path.parts:
        raise ValueError(f"{value!r} contains '..' (give the snapshot folder itself)")
    if any(ch in value for ch in ("\0", "\n")):
        raise ValueError(f"{value!r} contains a newline or NUL")
    return value


class SnapshotSettings(_Strict):
    """A raft snapshot before the first server change of every pass (``GET /v1/snapshot`` through the
    leader, with the ACL token), kept on the management host. No snapshot, no server change: the
    rollout waits and says why. Taken only with ``rollout.gates`` on (it needs Consul's HTTP API)."""

    enabled: Bool = Field(
        default=True,
        description="Take a snapshot before the first replace or remove of a server in a pass; while "
        "none can be taken, server changes wait (clients and registrators go on)",
    )
    dir: str | None = Field(
        default=None,
        description="Folder on the management host (created 0700; each file 0600: a snapshot holds every "
        "KV value and ACL token). Default: 'snapshots' beside the audit database",
    )
    keep: Annotated[Int, Field(ge=1, le=10000)] = Field(
        default=10, description="Snapshots kept per cluster; older ones are deleted after each new one"
    )
    timeout: Annotated[Number, Field(gt=0, le=3600)] = Field(
        default=120.0, description="Seconds the leader may take to produce the snapshot and send it"
    )

    @field_validator("dir")
    @classmethod
    def _dir(cls, value: str | None) -> str | None:
        return None if value is None else _check_snapshot_dir(value)


class Names(_Strict):
    """Container names on every host (the blog recipe's are 'consul' and 'registrator')."""

    agent: ContainerName = "consul"
    registrator: ContainerName = "registrator"

    @model_validator(mode="after")
    def _distinct(self) -> Names:
        if self.agent == self.registrator:
            raise ValueError(f"agent and registrator container names are both {self.agent!r}")
        return self


# Acknowledgements of dangerous changes (reconciler/dangers.py): each names one change the document
# intends, and only that change goes through. Three name the cluster-wide change; two name a host.
ACK_DATACENTER = "datacenter"
ACK_GOSSIP_KEY = "gossip-key"
ACK_REMOVE_SERVERS = "remove-servers"
ACK_NODE_NAME = "node-name"  # node-name:HOST
ACK_SERVER_TO_CLIENT = "server-to-client"  # server-to-client:HOST
ACK_WHOLE = (ACK_DATACENTER, ACK_GOSSIP_KEY, ACK_REMOVE_SERVERS)
ACK_PER_HOST = (ACK_NODE_NAME, ACK_SERVER_TO_CLIENT)
ACK_FORMS = (*ACK_WHOLE, *(f"{kind}:HOST" for kind in ACK_PER_HOST))


def acknowledgement(kind: str, host: str | None = None) -> str:
    """The exact text that acknowledges one dangerous change (``node-name:node1``, ``datacenter``)."""
    return kind if host is None else f"{kind}:{host}"


def acknowledged_host(text: str) -> str | None:
    """The host a per-host acknowledgement names (None for a cluster-wide one)."""
    kind, sep, host = text.partition(":")
    return host if sep and kind in ACK_PER_HOST else None


def _check_acknowledgement(value: str) -> str:
    kind, sep, host = value.partition(":")
    if (not sep and kind in ACK_WHOLE) or (sep and kind in ACK_PER_HOST and re.match(_NODE_NAME, host)):
        return value
    if kind in ACK_PER_HOST:
        why = f"{kind!r} names a host: write '{kind}:HOST' with the host's name (hosts[].name)"
    elif sep and kind in ACK_WHOLE:
        why = f"{kind!r} is cluster-wide: write it alone, without ':{host}'"
    else:
        why = "not a change that can be acknowledged"
    raise ValueError(f"{value!r}: {why}; the forms are: {', '.join(ACK_FORMS)}")


Acknowledgement = Annotated[str, AfterValidator(_check_acknowledgement)]


class Topology(_Strict):
    cluster: Annotated[str, StringConstraints(pattern=_CLUSTER_ID)] = Field(
        description="Cluster id: becomes the managed-by label; lower-case letters, digits, '.', '_', '-'"
    )
    datacenter: Annotated[str, StringConstraints(pattern=_DATACENTER)] = "dc1"
    consul: ConsulSettings = ConsulSettings()
    registrator: RegistratorSettings = RegistratorSettings()
    names: Names = Names()
    rollout: RolloutSettings = RolloutSettings()
    snapshots: SnapshotSettings = SnapshotSettings()
    hosts: tuple[Host, ...]
    acknowledge: tuple[Acknowledgement, ...] = Field(
        default=(),
        description="Dangerous changes this document intends (a change of datacenter, of a server's node "
        "name, a server made a client, a new gossip key reference, the removal of most servers): "
        f"each written as one of {', '.join(ACK_FORMS)}; without it such a change is refused",
    )

    @model_validator(mode="after")
    def _fleet_rules(self) -> Topology:
        problems: list[str] = []
        if not self.hosts:
            raise ValueError("hosts: the topology has no hosts; at least one server is needed")
        # Consul compares node names without regard to case: so do these checks
        names, nodes = [h.name for h in self.hosts], [h.node_name for h in self.hosts]
        _unique(problems, "name", [n.lower() for n in names], names)
        _unique(problems, "node", [n.lower() for n in nodes], nodes)
        _unique(problems, "advertise", [h.advertise for h in self.hosts])
        _unique(problems, "docker", [h.engine for h in self.hosts], [h.docker for h in self.hosts])
        if not any(h.role is Role.SERVER for h in self.hosts):
            problems.append("hosts: no host has role 'server'; a Consul datacenter needs at least one")
        _acknowledged_hosts(problems, self.acknowledge, names)
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
        if "snapshots" in self.model_fields_set and self.snapshots.enabled and not self.rollout.gates:
            found.append(
                "snapshots: no snapshot is taken while rollout.gates is false (a snapshot needs Consul's "
                "HTTP API); server changes go on without one"
            )
        for index, host in enumerate(self.hosts):
            if host.plain_tcp:
                found.append(
                    f"hosts[{index}].tls: host {host.name}'s engine at {host.docker} is reached over plain "
                    "HTTP (tls: false), unauthenticated and unencrypted; use tls: {ca, cert, key} outside a "
                    "test bench"
                )
        count = len(self.servers)
        if count % 2 == 0:
            found.append(
                f"hosts: {count} servers is an even number; it tolerates no more failures than "
                f"{count - 1} (use an odd number: 1, 3 or 5)"
            )
        return found


def _unique(problems: list[str], field: str, keys: list[str], shown: list[str] | None = None) -> None:
    """Each key once; a repeat is named by its index and its value as written (``shown``)."""
    seen: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key in seen:
            first = seen[key]
            written = (shown or keys)[index]
            same = "" if shown is None or shown[first] == written else f" (as {shown[first]!r})"
            problems.append(f"hosts[{index}].{field}: {written!r} is already used by hosts[{first}]{same}")
        else:
            seen[key] = index


def _acknowledged_hosts(problems: list[str], acknowledged: tuple[str, ...], names: list[str]) -> None:
    """A per-host acknowledgement names a host of this document: a misspelt one would match nothing."""
    known = set(names)
    for index, text in enumerate(acknowledged):
        host = acknowledged_host(text)
        if host is not None and host not in known:
            problems.append(
                f"acknowledge[{index}]: {text!r} names no host of the topology (hosts[].name: "
                f"{', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
            )
