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
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
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
_DIGEST_LENGTHS = {"sha256": 64, "sha512": 128}  # hex digits, as the OCI image spec defines them

ContainerName = Annotated[str, StringConstraints(pattern=_CONTAINER_NAME)]
NodeName = Annotated[str, StringConstraints(pattern=_NODE_NAME)]
# No lax coercion: a string where a boolean or a number is declared is an error (``gates: "off"`` is
# not quietly false), and so is a boolean where a number is declared. An integer is a number.
Bool = Annotated[bool, Strict()]
Int = Annotated[int, Strict()]
Number = Annotated[float, Strict()]


class Role(StrEnum):
    SERVER = "server"
    CLIENT = "client"


class NetworkMode(StrEnum):
    HOST = "host"
    BRIDGE = "bridge"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False, allow_inf_nan=False)


def check_image_reference(value: str) -> str:
    match = _IMAGE_REF.match(value)
    if not match:
        raise ValueError(
            f"{value!r} is not a valid image reference "
            "(expected [registry/]name[:tag][@sha256:digest], lower-case name)"
        )
    if match.group("digest"):
        algorithm, _, hexdigits = match.group("digest").partition(":")
        wanted = _DIGEST_LENGTHS.get(algorithm)
        if wanted is None:
            raise ValueError(f"{value!r}: digest algorithm {algorithm!r} is not sha256 or sha512")
        if len(hexdigits) != wanted:
            raise ValueError(f"{value!r}: a {algorithm} digest has {wanted} hex digits, not {len(hexdigits)}")
    return value


# Host folders that must never be mounted read-write into an agent (its entrypoint changes the owner
# of its data folder): the system's own, and Docker's.
_SYSTEM_DIRS = frozenset(
    (
        *("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media"),
        *("/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var"),
        *("/var/lib", "/var/log", "/var/run", "/var/lib/docker"),
    )
)
_SYSTEM_TREES: tuple[str, ...] = ("/bin/", "/boot/", "/dev/", "/etc/", "/lib/", "/lib64/", "/proc/")
_SYSTEM_TREES += ("/sbin/", "/sys/", "/usr/", "/var/lib/docker/")


def _check_data_dir(value: str) -> str:
    normal = str(PurePosixPath(re.sub("/+", "/", value)))  # POSIX keeps a leading "//": not here
    if normal in _SYSTEM_DIRS or normal.startswith(_SYSTEM_TREES) or (normal + "/").startswith(_SYSTEM_TREES):
        raise ValueError(
            f"{value!r} is a system folder; the agent's data folder is mounted read-write and owned by "
            "the agent: give a folder of its own (e.g. /var/lib/consul)"
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


# The agent flags a topology field already governs (or that defeat the controller's safety), and
# what to write instead.
GOVERNED_FLAGS = {
    "server": "use hosts[].role",
    "bootstrap-expect": "it follows the number of servers",
    "bootstrap": "a single-server bootstrap is never safe to repeat; the controller never bootstraps",
    "dev": "a dev agent keeps no data; use a real agent",
    "node": "use hosts[].name or hosts[].node",
    "node-id": "the agent keeps its own in its data folder",
    "datacenter": "use datacenter",
    "data-dir": "use hosts[].data_dir",
    "config-dir": "the controller writes the agent's config folder (the gossip key, ACL settings and tokens)",
    "client": "use consul.client_address or hosts[].client_address",
    "bind": "use hosts[].bind",
    "advertise": "use hosts[].advertise",
    "retry-join": "the servers are joined from the topology",
    "join": "the servers are joined from the topology",
    "rejoin": "the servers are joined from the topology",
    "encrypt": "use consul.encrypt (a reference, never the key)",
    "ui": "use consul.ui",
}


def _check_extra_args(values: tuple[str, ...]) -> tuple[str, ...]:
    for index, arg in enumerate(values):
        if not arg.startswith("-"):
            raise ValueError(f"item {index}: {arg!r} must be a flag starting with '-' (write '-flag=value')")
        if any(ch in arg for ch in ("\0", "\n")):
            raise ValueError(f"item {index}: {arg!r} contains a newline or NUL")
        flag = re.split(r"[=\s]", arg, maxsplit=1)[0]  # the value may be a secret: never echo it
        governed = GOVERNED_FLAGS.get(flag.lstrip("-"))
        if governed is not None:
            raise ValueError(f"item {index}: {flag!r} is set by the topology itself: {governed}")
    return values


class AgentACL(_Strict):
    """Consul's ACL system on every agent (``acl`` in the agent configuration; its presence turns ACLs
    on). The tokens are references, written into the agent's config folder before it starts: never on
    a command line, in an environment variable, a label, a log line or the audit log."""

    default_policy: Literal["allow", "deny"] = "deny"
    down_policy: Literal["allow", "deny", "extend-cache", "async-cache"] = "extend-cache"
    enable_token_persistence: Bool = False
    agent_token: SecretRef | None = Field(
        default=None,
        description="the token every agent uses for its own requests (its node's registration, "
        "anti-entropy): acl.tokens.agent",
    )
    default_token: SecretRef | None = Field(
        default=None,
        description="the token for requests that carry none (acl.tokens.default): Registrator's, which "
        "registers the host's services through its agent without a token of its own",
    )
    initial_management_token: SecretRef | None = Field(
        default=None,
        description="servers only: the management token the servers create when they bootstrap ACLs "
        "(acl.tokens.initial_management); leave it out when ACLs are bootstrapped by hand",
    )


class AgentTLS(_Strict):
    """TLS on every agent (Consul's ``tls`` stanza and its HTTPS port). The three files are paths on
    each host (each host keeps its own certificate at the same path), mounted read-only into the agent
    and into Registrator; their contents are never read by the controller, copied or labelled."""

    ca_file: str
    cert_file: str
    key_file: str
    verify_incoming: Bool = Field(
        default=True,
        description="agents ask every caller (RPC and HTTPS: the controller too) for a certificate "
        "signed by the CA",
    )
    verify_outgoing: Bool = True
    verify_server_hostname: Bool = True
    https_port: Annotated[Int, Field(ge=1, le=65535)] = 8501
    http: Bool = Field(
        default=False, description="keep the plain HTTP port (8500) open beside HTTPS; off by default"
    )

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _file(cls, value: str) -> str:
        return _check_absolute_path(value, "a file on each host")


_CONFIG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.(json|hcl)$")
# the files the controller writes into the agent's config folder itself
RESERVED_CONFIG_NAMES = frozenset(
    {"encrypt.json", "acl.json", "acl-agent-token.json", "acl-default-token.json"}
    | {"acl-initial-management.json", "tls.json"}
)


class AgentConfigFile(_Strict):
    """An agent configuration file of the operator's, by reference: a file on the management host that
    the controller copies into every agent's config folder before it starts. Its content is hashed
    (never shown: it may hold secrets), so an edit replaces the agents through the gates."""

    file: str = Field(description="the file on the management host (read on each pass)")
    name: str | None = Field(
        default=None, description="its name in /consul/config (default: the file's own name); .json or .hcl"
    )

    @field_validator("file")
    @classmethod
    def _path(cls, value: str) -> str:
        return _check_absolute_path(value, "a config file")

    @property
    def target(self) -> str:
        return self.name or PurePosixPath(self.file).name

    @model_validator(mode="after")
    def _target(self) -> AgentConfigFile:
        if not _CONFIG_NAME.match(self.target):
            raise ValueError(
                f"{self.target!r}: Consul reads only *.json and *.hcl files from its config folder "
                "(a name of letters, digits, '.', '_', '-'; give 'name' to rename it)"
            )
        if self.target in RESERVED_CONFIG_NAMES:
            raise ValueError(f"{self.target!r} is a file the controller writes itself; give another 'name'")
        return self


class ConsulSettings(_Strict):
    image: str = DEFAULT_CONSUL_IMAGE
    server_image: str | None = Field(default=None, description="Overrides 'image' for servers")
    client_image: str | None = Field(default=None, description="Overrides 'image' for clients")
    ui: Bool = True
    client_address: str = "0.0.0.0"
    encrypt: SecretRef | None = None
    acl: AgentACL | None = None
    tls: AgentTLS | None = None
    config_files: tuple[AgentConfigFile, ...] = ()
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

    @field_validator("config_files")
    @classmethod
    def _distinct_config_files(cls, values: tuple[AgentConfigFile, ...]) -> tuple[AgentConfigFile, ...]:
        seen: dict[str, int] = {}
        for index, ref in enumerate(values):
            if ref.target in seen:
                raise ValueError(
                    f"item {index}: {ref.target!r} is already the name of item {seen[ref.target]}"
                )
            seen[ref.target] = index
        return values


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
        address = ipaddress.ip_address(_ip_or_raise(value))
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
        address = ipaddress.ip_address(_ip_or_raise(value))
        _unicast(value, address)
        return str(address)

    @field_validator("docker")
    @classmethod
    def _docker_url(cls, value: str) -> str:
        if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError(f"{value!r} contains whitespace or a control character")
        parts = urlsplit(value)
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
        if self.tls is not None and not self.docker.startswith("tcp://"):
            raise ValueError("'tls' applies only to a tcp:// docker endpoint")
        return self

    @property
    def node_name(self) -> str:
        return self.node or self.name

    @property
    def engine(self) -> str:
        """The Docker endpoint in one normal form, to tell whether two hosts name the same engine:
        scheme and host lower-case, the default ssh port written out, repeated and trailing '/' dropped
        from a socket path."""
        parts = urlsplit(self.docker)
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
            return urlsplit(self.docker).path
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


def _unicast(value: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if address.is_multicast or (isinstance(address, ipaddress.IPv4Address) and address == _BROADCAST):
        raise ValueError(f"{value!r} is a multicast or broadcast address; an agent needs a unicast one")


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _ip_or_raise(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    return value
