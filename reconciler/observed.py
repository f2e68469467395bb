"""What the engines report: plain data, produced by :mod:`reconciler.observe`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from desired_state.spec import Endpoint, index_by_name
from reconciler import labels as L


@dataclass(frozen=True)
class ObservedContainer:
    id: str
    name: str
    image: str
    state: str  # Docker's State: created, running, paused, restarting, removing, exited, dead
    labels: dict[str, str] = field(default_factory=dict)

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
        return self.labels.get(L.AGENT_HTTP)

    def record(self) -> dict[str, Any] | None:
        return L.record_from(self.labels)

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
    list_calls: int = 0

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
