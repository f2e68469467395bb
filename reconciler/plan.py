"""DesiredFleet x ObservedFleet -> Plan (pure, deterministic).

A plan is an ordered list of actions, each with the reasons for it:

- ``create``   the container is missing;
- ``replace``  its spec hash differs (the reason names every changed field, old and new),
               or Docker reports it dead;
- ``start``    it is ours, current, but not running;
- ``remove``   it is ours but no longer desired (its host left the topology, or a
               leftover of an interrupted replacement);
- ``blocked``  the name is held by a container without our managed-by label: never touched;
- ``adopt``    such a container, named by the operator with ``--adopt`` (``all``, ``HOST`` or
               ``HOST/NAME``), that differs from its spec: replaced (the reasons name each field);
- ``adopt-in-place`` such a container that already matches its spec field for field: taken over as it
               runs (recorded by its id in the audit database), replaced only when the spec next changes.

Order: servers, then clients, then registrators (so on each host the agent comes
before its registrator); removals last, registrators first. Hosts keep their
order in the topology; hosts that left it come after, by name.

A pass is refused, nothing done, when it would remove more than ``max_removals`` containers or make
a dangerous change its document does not acknowledge (``reconciler/dangers.py``: a new datacenter, a
server renamed or made a client, a new gossip key reference, most servers removed).

How a plan runs is decided here too (``Plan.phases``): one phase per step of that
order; in each, the actions that disrupt a Consul server run one at a time
cluster-wide (``Phase.serial``, in rollout order with ``Phase.rollout``), the
others on their hosts, hosts in parallel (``Phase.parallel``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from itertools import groupby
from typing import Any

from desired_state.gcpause import collector_paused
from desired_state.handrun import differences
from desired_state.spec import HASH_VERSION, ContainerSpec, DesiredFleet
from reconciler.actual import Adoption, ObservedContainer, ObservedFleet, ObservedHost
from reconciler.dangers import AGENT_ROLES, Danger, find_dangers, refusal, unused_acknowledgements
from reconciler.vocabulary import DEFAULT_MAX_REMOVALS as DEFAULT_MAX_REMOVALS

ROLE_ORDER = {"server": 0, "client": 1, "registrator": 2}


class Kind(StrEnum):
    CREATE = "create"
    REPLACE = "replace"
    START = "start"
    REMOVE = "remove"
    BLOCKED = "blocked"
    ADOPT = "adopt"
    ADOPT_IN_PLACE = "adopt-in-place"


DISRUPTIVE = frozenset({Kind.REPLACE, Kind.REMOVE, Kind.ADOPT})


@dataclass(frozen=True)
class Change:
    """One reason: a field that changed (old -> new), or a plain message."""

    field: str | None = None
    old: Any = None
    new: Any = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.field is None:
            return {"message": self.message}
        return {"field": self.field, "old": self.old, "new": self.new}

    def __str__(self) -> str:
        if self.field is None:
            return self.message or ""
        return f"{self.field}: {_short(self.old)} -> {_short(self.new)}"


@dataclass(frozen=True)
class Action:
    kind: Kind
    host: str
    name: str
    role: str | None
    node: str | None
    reasons: tuple[Change, ...]
    desired: ContainerSpec | None = None
    observed: ObservedContainer | None = None

    @property
    def disruptive(self) -> bool:
        return self.kind in DISRUPTIVE

    @property
    def old_hash(self) -> str | None:
        return self.observed.spec_hash if self.observed else None

    @property
    def new_hash(self) -> str | None:
        return self.desired.spec_hash() if self.desired else None

    @property
    def image(self) -> str | None:
        if self.desired is not None:
            return self.desired.image
        return self.observed.image if self.observed else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "host": self.host,
            "container": self.name,
            "role": self.role,
            "node": self.node,
            "reasons": [r.to_dict() for r in self.reasons],
            "old_hash": self.old_hash,
            "new_hash": self.new_hash,
            "image": self.image,
            "container_id": self.observed.id if self.observed else None,
        }


@dataclass(frozen=True)
class Plan:
    cluster: str
    actions: tuple[Action, ...]
    unreachable: dict[str, str] = field(default_factory=dict)  # host -> error
    retired_hosts: tuple[str, ...] = ()  # hosts that left the topology but still run our containers
    refused: str | None = None  # set when the pass must not run at all
    deferred: dict[str, str] = field(default_factory=dict)  # host -> why it is left alone this pass
    warnings: tuple[str, ...] = ()  # what the operator should know before it runs (versions.py)
    dangers: tuple[Danger, ...] = ()  # dangerous changes found, acknowledged or not (dangers.py)
    unused_acknowledgements: tuple[str, ...] = ()  # acknowledged, but no such change this pass

    @property
    def changes(self) -> tuple[Action, ...]:
        """Actions that would change something (everything but ``blocked``)."""
        return tuple(a for a in self.actions if a.kind is not Kind.BLOCKED)

    def phases(self) -> tuple[Phase, ...]:
        """The changes, cut into phases where the phase key changes (the plan's own order)."""
        phases = []
        for key, group in groupby(self.changes, key=phase_key):
            actions = tuple(group)
            serial = tuple(a for a in actions if disrupts_server(a))
            parallel = tuple(a for a in actions if not disrupts_server(a))
            phases.append(Phase(key, parallel, serial))
        return tuple(phases)

    @property
    def is_noop(self) -> bool:
        return not self.actions and not self.unreachable and self.refused is None

    @property
    def needs_secrets(self) -> bool:
        """Some container is made from its spec this pass, so its secret references must resolve."""
        made = (Kind.CREATE, Kind.REPLACE, Kind.ADOPT)
        return any(a.desired is not None and a.desired.secret_files for a in self.actions if a.kind in made)

    def hosts_to_forget(self, unfinished: Iterable[str]) -> tuple[str, ...]:
        """The hosts that left the topology and are now empty: every retired host but those with an
        action that did not succeed (``unfinished``), which are looked at again next pass."""
        left_over = set(unfinished)
        return tuple(host for host in self.retired_hosts if host not in left_over)

    def counts(self) -> dict[str, int]:
        counts = {kind.value: 0 for kind in Kind}
        for action in self.actions:
            counts[action.kind.value] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "counts": self.counts(),
            "actions": [a.to_dict() for a in self.actions],
            "unreachable": dict(self.unreachable),
            "retired_hosts": list(self.retired_hosts),
            "refused": self.refused,
            "warnings": list(self.warnings),
            "deferred": dict(self.deferred),
            "dangers": [d.to_dict() for d in self.dangers],
            "unused_acknowledgements": list(self.unused_acknowledgements),
        }


@dataclass(frozen=True)
class Phase:
    """One step of a plan: ``parallel`` runs first, hosts in parallel and each host's actions in plan
    order; then ``serial``, the disruptions of a Consul server, one at a time cluster-wide (plan order;
    a gated rollout takes them in ``rollout`` order)."""

    key: tuple[int, int]  # phase_key of its actions
    parallel: tuple[Action, ...]
    serial: tuple[Action, ...]

    def rollout(self, leader: str | None) -> tuple[Action, ...]:
        """The serial actions as a gated rollout runs them: servers already down first (repairs: what
        restores quorum), then the followers, the leader last. ``leader`` is the node Consul names
        leader when the phase's serial part begins (None: no leader known)."""
        return tuple(sorted(self.serial, key=lambda a: (not is_down(a), a.node == leader)))


def disrupts_server(action: Action) -> bool:
    """A replace, remove or adoption that stops a Consul server (desired or current role; a container
    started by hand is one by its command line). Removing a container that never started (the
    temporary container of an interrupted replacement) stops nothing: no agent ever ran in it."""
    was_server = action.observed is not None and action.observed.is_consul_server
    never_started = (
        action.kind is Kind.REMOVE and action.observed is not None and action.observed.state == "created"
    )
    return action.disruptive and (action.role == "server" or was_server) and not never_started


def is_down(action: Action) -> bool:
    """The observed container is not serving: stopped, never started, or crash-looping ("restarting":
    a server that keeps dying is failed, and repairing it must not wait behind gates or a leave)."""
    return action.observed is not None and action.observed.state != "running"


def phase_key(action: Action) -> tuple[int, int]:
    """The step of the plan's order an action belongs to: (0, role rank) for everything but removals,
    then (1, 3 - role rank) for removals (registrators first)."""
    rank = ROLE_ORDER.get(action.role or "", 3)
    return (1, 3 - rank) if action.kind is Kind.REMOVE else (0, rank)


REPAIRS = (Kind.CREATE, Kind.START)


def repairs_only(plan: Plan) -> Plan:
    """The part of a plan that needs no leader: creating a missing container and starting a stopped
    one. Docker's name uniqueness serialises them (two controllers cannot both create ``consul`` on a
    host), while replacing, removing and adopting stay with the leader."""
    return replace(plan, actions=tuple(a for a in plan.actions if a.kind in REPAIRS), retired_hosts=())


def make_plan(
    desired: DesiredFleet,
    observed: ObservedFleet,
    *,
    max_removals: int = DEFAULT_MAX_REMOVALS,
    adopt: Iterable[str] = (),
    deferred: Mapping[str, str] | None = None,
    adopted: Mapping[tuple[str, str], Adoption] | None = None,
) -> Plan:
    """Compare and order. ``adopt`` holds what the operator allowed us to take over: "all", "HOST" or
    "HOST/NAME"; ``adopted``: (host, name) -> the containers already adopted in place (ours by id);
    ``deferred`` hosts (backing off after failures) get no actions this pass."""
    with collector_paused():  # thousands of small acyclic values (desired_state/gcpause.py)
        return _make_plan(desired, observed, max_removals, adopt, deferred, adopted)


def _make_plan(
    desired: DesiredFleet,
    observed: ObservedFleet,
    max_removals: int,
    adopt: Iterable[str],
    deferred: Mapping[str, str] | None,
    adopted: Mapping[tuple[str, str], Adoption] | None,
) -> Plan:
    deferred = dict(deferred or {})
    if not desired.hosts:
        return Plan(desired.cluster, (), refused="the topology has no hosts; refusing to plan a pass")
    adopt_set = frozenset(adopt)
    actions: list[Action] = []
    unreachable: dict[str, str] = {}
    order = {h.name: i for i, h in enumerate(desired.hosts)}
    retired: list[str] = []

    for host in desired.hosts:
        if host.name in deferred:
            continue
        seen = observed.host(host.name)
        if seen is None or not seen.reachable:
            unreachable[host.name] = seen.error if seen and seen.error else "not observed"
            continue
        actions += _host_actions(desired.cluster, host.specs, seen, adopt_set, adopted or {})

    for seen in sorted(observed.hosts, key=lambda h: h.name):
        if seen.name in order or seen.name in deferred:
            continue
        if not seen.reachable:
            unreachable[seen.name] = seen.error or "not observed"
            continue
        ours = [c for c in seen.managed if c.managed_by == desired.cluster]
        if ours:
            retired.append(seen.name)
            order[seen.name] = len(order)
        for container in ours:
            actions.append(_remove(seen.name, container, "host is no longer in the topology"))

    actions.sort(key=lambda a: _sort_key(a, order))
    changing = {a.host for a in actions if a.kind in (Kind.REPLACE, Kind.ADOPT) and a.role in AGENT_ROLES}
    dangers = find_dangers(desired, observed, skip=deferred, adopted=adopted, changing=changing)
    refused = "; ".join(r for r in (_too_many_removals(actions, max_removals), refusal(dangers)) if r)
    unused = unused_acknowledgements(desired.acknowledged, dangers)
    return Plan(
        desired.cluster,
        tuple(actions),
        unreachable,
        tuple(retired),
        refused or None,
        deferred,
        dangers=dangers,
        unused_acknowledgements=unused,
    )


def _too_many_removals(actions: list[Action], max_removals: int) -> str | None:
    removals = sum(1 for a in actions if a.kind is Kind.REMOVE)
    if removals <= max_removals:
        return None
    return (
        f"this pass would remove {removals} containers, more than the limit of {max_removals}; "
        "check the topology, then raise --max-removals if this is intended"
    )


def adoption_asked(adopt: frozenset[str], host: str, name: str) -> bool:
    """Did the operator allow taking over ``name`` on ``host``? (``--adopt all``, ``HOST``, ``HOST/NAME``)"""
    return bool({"all", host, f"{host}/{name}"} & adopt)


def _host_actions(
    cluster: str,
    specs: tuple[ContainerSpec, ...],
    seen: ObservedHost,
    adopt: frozenset[str],
    adopted: Mapping[tuple[str, str], Adoption],
) -> list[Action]:
    actions: list[Action] = []
    present = seen.by_name()
    wanted = {spec.name for spec in specs}
    for spec in specs:
        current = present.get(spec.name)
        adoption = adopted.get((seen.name, spec.name))
        if current is None:
            actions.append(_action(Kind.CREATE, spec, None, (Change(message="container is missing"),)))
        elif current.managed_by is None and adoption is not None and adoption.container_id == current.id:
            action = _compare(spec, current, adoption)  # adopted in place: ours by its id
            if action is not None:
                actions.append(action)
        elif current.managed_by != cluster:
            actions.append(_collision(cluster, spec, current, adoption_asked(adopt, seen.name, spec.name)))
        else:
            action = _compare(spec, current)
            if action is not None:
                actions.append(action)
    for container in seen.managed:
        if container.managed_by == cluster and container.name not in wanted:
            actions.append(_remove(seen.name, container, "no longer desired on this host"))
    return actions


def _compare(
    spec: ContainerSpec, current: ObservedContainer, adoption: Adoption | None = None
) -> Action | None:
    """Ours (by its labels, or by its id when adopted in place): replaced when its spec changed."""
    if adoption is not None:
        if adoption.spec_hash != spec.spec_hash():
            return _action(Kind.REPLACE, spec, current, tuple(field_changes(adoption.record, spec.record())))
    elif current.spec_hash != spec.spec_hash() or current.hash_version != HASH_VERSION:
        return _action(Kind.REPLACE, spec, current, tuple(field_changes(current.record(), spec.record())))
    if current.config_edits:  # a file mounted from the host, edited since the agent read it
        edited = tuple(
            Change(field="config_files", old=e.before(), new=e.after()) for e in current.config_edits
        )
        return _action(Kind.REPLACE, spec, current, edited)
    if current.state == "dead":
        return _action(Kind.REPLACE, spec, current, (Change(message="container is dead"),))
    if current.state in ("running", "restarting", "removing"):
        return None  # fine, or Docker is already handling it (a removal triggers another pass when done)
    return _action(Kind.START, spec, current, (Change(message=f"container is {current.state}"),))


def _collision(cluster: str, spec: ContainerSpec, current: ObservedContainer, adopt: bool) -> Action:
    owner = f"managed by cluster {current.managed_by!r}" if current.managed_by else "not managed by us"
    what = f"name held by container {current.short_id} ({current.image}, {current.state}), {owner}"
    if adopt and current.managed_by is None and current.found is not None:
        diffs = differences(spec, current.found, current.image_env)
        if not diffs:
            why = (
                f"container {current.short_id}, started by hand, matches its spec field for field: "
                "taken over as it runs, nothing restarted"
            )
            return _action(Kind.ADOPT_IN_PLACE, spec, current, (Change(message=why),))
        changes = tuple(Change(field=name, old=old, new=new) for name, old, new in diffs)
        reasons = (Change(message=f"{what}; adopting by replacement"), *changes)
        return _action(Kind.ADOPT, spec, current, reasons)
    if adopt and current.managed_by is None:
        return _action(Kind.ADOPT, spec, current, (Change(message=f"{what}; adopting as asked"),))
    hint = f"; to take it over: --adopt {spec.host}/{spec.name}" if current.managed_by is None else ""
    return _action(Kind.BLOCKED, spec, current, (Change(message=what + hint),))


def field_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[Change]:
    """Name every field of the hashed record that differs (old and new value)."""
    if old is None:
        return [Change(message="the container carries no readable spec label (made by an older version?)")]
    changes = [
        Change(field=key, old=old.get(key), new=new.get(key))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    return changes or [Change(message="spec hash version changed; fields are equal")]


def _action(
    kind: Kind, spec: ContainerSpec, current: ObservedContainer | None, reasons: tuple[Change, ...]
) -> Action:
    return Action(kind, spec.host, spec.name, spec.role, spec.node, reasons, spec, current)


def _remove(host: str, container: ObservedContainer, why: str) -> Action:
    return Action(
        Kind.REMOVE,
        host,
        container.name,
        container.role,
        container.node,
        (Change(message=why),),
        None,
        container,
    )


def _sort_key(action: Action, order: dict[str, int]) -> tuple[int, int, int, str]:
    """The phase first, then the host's place in the topology, then the container's name."""
    step, rank = phase_key(action)
    return (step, rank, order.get(action.host, len(order)), action.name)


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)
