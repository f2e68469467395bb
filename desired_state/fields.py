"""The building blocks of the topology's models (desired_state/model.py, desired_state/agent.py):
strict scalar types, names and patterns, the image reference, paths, addresses and secret references,
each checked where it is declared.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
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


# The path checks are pure and a fleet repeats its paths on every host (data_dir, docker_socket): each
# distinct path is checked once per process, not once per host.
@functools.lru_cache(maxsize=1024)
def _check_data_dir(value: str) -> str:
    normal = str(PurePosixPath(re.sub("/+", "/", value)))  # POSIX keeps a leading "//": not here
    if normal in _SYSTEM_DIRS or normal.startswith(_SYSTEM_TREES) or (normal + "/").startswith(_SYSTEM_TREES):
        raise ValueError(
            f"{value!r} is a system folder; the agent's data folder is mounted read-write and owned by "
            "the agent: give a folder of its own (e.g. /var/lib/consul)"
        )
    return value


@functools.lru_cache(maxsize=1024)
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


def _unicast(value: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if address.is_multicast or (isinstance(address, ipaddress.IPv4Address) and address == _BROADCAST):
        raise ValueError(f"{value!r} is a multicast or broadcast address; an agent needs a unicast one")


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``value`` as an address, or a ValueError that names it. An IPv4 address in its usual form (what
    ``ipaddress`` accepts: four decimal octets, no leading zero) is built from its octets: parsing
    each of a 10,000-host document's addresses with ``ipaddress`` took a tenth of its load."""
    if _DOTTED_QUAD.fullmatch(value):
        a, b, c, d = value.split(".")
        return ipaddress.IPv4Address(int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d))
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
