"""What the engines report: plain data, produced by :mod:`reconciler.observe`."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from desired_state.handrun import FoundContainer
from desired_state.spec import Endpoint, index_by_name
from reconciler import labels as L
from reconciler.mounted import Edit


@dataclass(frozen=True)
class ObservedContainer:
    id: str
    name: str
    image: str
    state: str  # Docker's State: created, running, paused, restarting, removing, exited, dead
    labels: dict[str, str] = field(default_factory=dict)
    command: str = ""  # Docker's "Command": the entrypoint and arguments, joined by spaces
    # A container started by hand that holds a desired name: what its inspect says (for adoption), and
    # its image's own environment (which Docker lists among the container's)
    found: FoundContainer | None = None
    image_env: tuple[str, ...] = ()
    # the mounted config files edited on the host since this agent read them (reconciler/mounted.py)
    config_edits: tuple[Edit, ...] = ()

    @property
    def managed_by(self) -> str | None:
        return self.labels.get(L.MANAGED_BY)

    @property
    def role(self) -> str | None:
        return self.labels.get(L.ROLE)

    @property
    def node(self) -> str | None:
        return self.labels.get(L.NODE)

    @property
    def spec_hash(self) -> str | None:
        return self.labels.get(L.SPEC_HASH)

    @property
    def hash_version(self) -> str | None:
        return self.labels.get(L.HASH_VERSION_LABEL)

    @property
    def agent_http(self) -> str | None:
        """The agent's HTTP address: our label, or for a container started by hand, its command line."""
        if self.managed_by is not None:
            return self.labels.get(L.AGENT_HTTP)
        return _http_from_command(self.command)

    @property
    def is_consul_server(self) -> bool:
        """A Consul server agent: by our role label, or for a container started by hand (``docker run
        ... consul agent -server ...``), by its command line."""
        if self.managed_by is not None:
            return self.role == "server"
        words = command_words(self.command)
        return "agent" in words and any(w in ("-server", "--server", "-server=true") for w in words)

    def record(self) -> dict[str, Any] | None:
        return L.record_from(self.labels)

    @property
    def mounted_config(self) -> dict[str, str]:
        """Config files mounted from the host (path in the container -> on the host)."""
        return L.mounted_files(self.labels)

    @property
    def short_id(self) -> str:
        return self.id[:12]


@dataclass(frozen=True)
class ObservedHost:
    name: str
    endpoint: Endpoint
    reachable: bool
    error: str | None = None
    managed: tuple[ObservedContainer, ...] = ()  # carry the managed-by label (any cluster)
    others: tuple[ObservedContainer, ...] = ()  # unlabelled containers holding names we want

    def by_name(self) -> dict[str, ObservedContainer]:
        found = {c.name: c for c in self.others}
        found.update({c.name: c for c in self.managed})
        return found


@dataclass(frozen=True)
class ObservedFleet:
    hosts: tuple[ObservedHost, ...]
    _by_name: dict[str, ObservedHost] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The planner looks up every host by name: a dict keeps a pass over N hosts O(N), not O(N^2).
        object.__setattr__(self, "_by_name", index_by_name(self.hosts))

    def host(self, name: str) -> ObservedHost | None:
        return self._by_name.get(name)


def command_words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def flag_value(words: list[str], name: str) -> str | None:
    """The last value of ``-name value`` or ``-name=value`` in a Consul command line."""
    found = None
    for i, word in enumerate(words):
        bare = word.lstrip("-")
        if word.startswith("-") and bare == name and i + 1 < len(words):
            found = words[i + 1]
        elif word.startswith("-") and bare.startswith(name + "="):
            found = bare.split("=", 1)[1]
    return found


def _http_from_command(command: str) -> str | None:
    """HOST:PORT of the agent's HTTP API from ``consul agent`` flags: -client (its first address; an
    unspecified one is reached at -advertise or -bind) and -http-port (8500)."""
    words = command_words(command)
    if "agent" not in words:
        return None
    client = (flag_value(words, "client") or "127.0.0.1").split()[0]
    if client in ("0.0.0.0", "::", "[::]"):
        client = flag_value(words, "advertise") or flag_value(words, "bind") or "127.0.0.1"
    port = flag_value(words, "http-port") or "8500"
    host = f"[{client}]" if ":" in client and not client.startswith("[") else client
    return f"{host}:{port}"


@dataclass(frozen=True)
class Adoption:
    """A container started by hand that was taken over as it ran (``apply --adopt``): ours by its id,
    since Docker cannot label a running container, and the spec it matched then (its hash and record)."""

    container_id: str
    spec_hash: str
    record: dict[str, Any] = field(default_factory=dict)
