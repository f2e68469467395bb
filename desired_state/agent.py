"""The ``consul`` section of a topology: the agent image and flags, and what the controller writes into
the agent's config folder: the gossip key, ACLs, TLS and the operator's config files (each secret by
reference, never its value).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from desired_state.fields import (
    DEFAULT_CONSUL_IMAGE,
    Bool,
    Int,
    Role,
    SecretRef,
    _check_absolute_path,
    _Strict,
    check_image_reference,
    parse_ip,
)

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
    """An agent configuration file of the operator's, by reference, in one of two ways:

    * ``host_path``: a file on each host (kept there by the operator's configuration management),
      mounted read-only into the agent's config folder. The controller reads it through the host's
      Docker engine: when the agent is created (its hash recorded in the container) and on every pass,
      so an edit on a host replaces that host's agent through the gates.
    * ``file``: a file on the management host that the controller copies into every agent's config
      folder before it starts; its content is in the spec hash, so an edit replaces every agent.

    Either way its content is hashed, never shown: it may hold secrets."""

    file: str | None = Field(
        default=None, description="a file on the management host, copied into each agent"
    )
    host_path: str | None = Field(
        default=None, description="a file on each host, mounted read-only into its agent"
    )
    name: str | None = Field(
        default=None, description="its name in /consul/config (default: the file's own name); .json or .hcl"
    )

    @field_validator("file", "host_path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else _check_absolute_path(value, "a config file")

    @property
    def source(self) -> str:
        """The path given (``host_path`` or ``file``)."""
        return self.host_path or self.file or ""

    @property
    def target(self) -> str:
        return self.name or PurePosixPath(self.source).name

    @model_validator(mode="after")
    def _target(self) -> AgentConfigFile:
        if (self.file is None) == (self.host_path is None):
            raise ValueError(
                "give one of 'host_path' (a file on each host, mounted into its agent) or 'file' (a file "
                "on the management host, copied into every agent)"
            )
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
        parse_ip(value)
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
