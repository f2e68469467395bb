"""Dangerous changes (pure): what a document would do to the running agents that Consul cannot take
back, refused unless the document acknowledges each one by name (``acknowledge:``).

The desired fleet is compared with what our agent containers show: their labels (role, node) and the
hashed ``spec`` label, whose command holds ``-datacenter`` and whose secret files hold the gossip key's
*reference*. Only what is observed decides: a fresh fleet, an unreachable host and a host left alone
this pass (backing off) show nothing and refuse nothing.

- ``datacenter``: an agent runs in another datacenter than the document's;
- ``node-name:HOST``: HOST's server runs under another node name than the document gives it (a server
  that also becomes a client is ``server-to-client:HOST`` alone: its raft membership ends either way);
- ``server-to-client:HOST``: HOST runs a server, the document makes it a client;
- ``gossip-key``: an agent's gossip key reference differs from the document's, or one of them has a key
  and the other none. The key itself is never known here: a new value under the same reference is not
  seen;
- ``remove-servers``: of the N servers observed, more than a minority, (N - 1) // 2, would go (their host
  left the topology, or they become clients).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from desired_state.model import (
    ACK_DATACENTER,
    ACK_GOSSIP_KEY,
    ACK_NODE_NAME,
    ACK_REMOVE_SERVERS,
    ACK_SERVER_TO_CLIENT,
    acknowledgement,
)
from desired_state.spec import ContainerSpec, DesiredFleet
from reconciler.actual import Adoption, ObservedContainer, ObservedFleet, command_words, flag_value

AGENT_ROLES = ("server", "client")
GOSSIP_KEY_FIELD = "encrypt"  # the key of the gossip key's secret file (desired_state/render.py)
SHOWN = 5  # names listed in an explanation before "and N more"


@dataclass(frozen=True)
class Danger:
    """One dangerous change: the exact text that acknowledges it, why it is dangerous, and whether the
    document acknowledges it."""

    acknowledgement: str
    explanation: str
    acknowledged: bool = False

    def __str__(self) -> str:
        return f"{self.explanation} [acknowledge: {self.acknowledgement}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "acknowledgement": self.acknowledgement,
            "explanation": self.explanation,
            "acknowledged": self.acknowledged,
        }


@dataclass(frozen=True)
class RunningAgent:
    """A Consul agent of ours as its container shows it. ``datacenter`` is None where it cannot be
    read; ``gossip_known`` is False where the spec label is unreadable (no decision on the key)."""

    host: str
    node: str | None
    server: bool
    datacenter: str | None
    gossip: str | None  # the gossip key's reference ("env:NAME", "file:/path"), None for no key
    gossip_known: bool


def find_dangers(
    desired: DesiredFleet,
    observed: ObservedFleet,
    *,
    skip: Collection[str] = (),
    adopted: Mapping[tuple[str, str], Adoption] | None = None,
    changing: Collection[str] | None = None,
) -> tuple[Danger, ...]:
    """Every dangerous change ``desired`` makes to the agents ``observed`` shows, acknowledged or not;
    ``skip``: hosts left alone this pass; ``changing``: the hosts whose agent the pass replaces (None:
    any may be). An agent left as it runs matches its spec, and the spec hash covers the datacenter,
    the node name, the role and the gossip key's reference: only the changing ones are read further
    (their spec label parsed), so a converged pass over many hosts pays nothing for this. The order:
    datacenter, gossip key, then per host in the topology's order (node name, server to client), then
    the removal of servers."""
    if changing is not None and not changing and all(desired.host(h.name) for h in observed.hosts):
        return ()  # every agent stays as it runs, on a host of the document: nothing to compare
    agents = running_agents(desired.cluster, observed, skip, adopted or {}, changing)
    if not agents:
        return ()
    wanted = desired_agents(desired)
    staying = [a for a in agents if a.host in wanted and (changing is None or a.host in changing)]
    found = [
        *_datacenter(staying, desired.datacenter),
        *_gossip_key(staying, _desired_gossip(wanted.values())),
        *_per_host(staying, wanted, [h.name for h in desired.hosts]),
        *_removals(agents, wanted),
    ]
    return tuple(
        Danger(d.acknowledgement, d.explanation, d.acknowledgement in desired.acknowledged) for d in found
    )


def refusal(dangers: Iterable[Danger]) -> str | None:
    """The refusal of a pass that would make dangerous changes its document does not acknowledge: each
    change with its acknowledgement, and the line to add. One line (it is also the run's error)."""
    open_ = [d for d in dangers if not d.acknowledged]
    if not open_:
        return None
    changes = "; ".join(str(d) for d in open_)
    wanted = ", ".join(d.acknowledgement for d in open_)
    return (
        f"dangerous change{'s' if len(open_) > 1 else ''} refused, nothing done: {changes}. "
        f"If this is intended, add to the document: acknowledge: [{wanted}]"
    )


def unused_acknowledgements(acknowledged: Iterable[str], dangers: Iterable[Danger]) -> tuple[str, ...]:
    """The acknowledgements that match no change of this pass: harmless, but one left in the document
    would let the next such change through unasked."""
    used = {d.acknowledgement for d in dangers}
    return tuple(sorted(a for a in set(acknowledged) if a not in used))


# --- what runs and what is wanted ---------------------------------------------------------------------


def running_agents(
    cluster: str,
    observed: ObservedFleet,
    skip: Collection[str],
    adopted: Mapping[tuple[str, str], Adoption],
    changing: Collection[str] | None = None,
) -> list[RunningAgent]:
    """Our agents on the reachable hosts (not ``skip``): labelled ones, and those adopted in place (ours
    by id, their record in the audit database). A container never started (the temporary container of
    an interrupted replacement) ran no agent and counts for nothing. The spec label is read only on
    the ``changing`` hosts (None: on all)."""
    agents: list[RunningAgent] = []
    for host in observed.hosts:
        if not host.reachable or host.name in skip:
            continue
        read = changing is None or host.name in changing
        for container in host.managed:
            if container.managed_by == cluster and container.role in AGENT_ROLES and _ran(container):
                agents.append(_labelled(host.name, container, read))
        for container in host.others:
            adoption = adopted.get((host.name, container.name))
            if adoption is not None and adoption.container_id == container.id and _ran(container):
                agent = _adopted(host.name, adoption.record)
                if agent is not None:
                    agents.append(agent)
    return agents


def desired_agents(desired: DesiredFleet) -> dict[str, ContainerSpec]:
    """host -> the agent the document wants there."""
    return {host.name: spec for host in desired.hosts for spec in host.specs if spec.role in AGENT_ROLES}


def _ran(container: ObservedContainer) -> bool:
    return container.state != "created"


def _labelled(host: str, container: ObservedContainer, read: bool = True) -> RunningAgent:
    """From its labels; its datacenter and gossip key only when ``read`` (its spec label parsed)."""
    server = container.role == "server"
    if not read:
        return RunningAgent(host, container.node, server, datacenter=None, gossip=None, gossip_known=False)
    record = container.record()
    words = _command_of(record) if record is not None else None
    if words is None:
        words = command_words(container.command)
    known = record is not None and isinstance(record.get("secret_files"), list)
    return RunningAgent(
        host=host,
        node=container.node,
        server=server,
        datacenter=flag_value(words, "datacenter"),
        gossip=_gossip_in(record.get("secret_files") if record is not None else None),
        gossip_known=known,
    )


def _adopted(host: str, record: Mapping[str, Any]) -> RunningAgent | None:
    """An agent adopted in place, as the spec it matched then records it (None: not an agent)."""
    words = _command_of(record)
    if words is None or "agent" not in words:
        return None
    return RunningAgent(
        host=host,
        node=flag_value(words, "node"),
        server="-server" in words,
        datacenter=flag_value(words, "datacenter"),
        gossip=_gossip_in(record.get("secret_files")),
        gossip_known=isinstance(record.get("secret_files"), list),
    )


def _command_of(record: Mapping[str, Any]) -> list[str] | None:
    command = record.get("command")
    if isinstance(command, list) and all(isinstance(w, str) for w in command):
        return list(command)
    return None


def _gossip_in(entries: object) -> str | None:
    """The gossip key's reference in a record's secret files (``PATH:encrypt=<env:NAME>``)."""
    if not isinstance(entries, list):
        return None
    for entry in entries:
        _, sep, rest = str(entry).partition(f":{GOSSIP_KEY_FIELD}=<")
        if sep and rest.endswith(">"):
            return rest[:-1]
    return None


def _desired_gossip(specs: Iterable[ContainerSpec]) -> str | None:
    for spec in specs:
        for secret in spec.secret_files:
            if secret.key == GOSSIP_KEY_FIELD:
                return secret.ref.describe()
    return None


# --- the rules ------------------------------------------------------------------------------------


def _datacenter(agents: list[RunningAgent], wanted: str) -> list[Danger]:
    elsewhere: dict[str, list[str]] = {}
    for agent in agents:
        if agent.datacenter is not None and agent.datacenter != wanted:
            elsewhere.setdefault(agent.datacenter, []).append(agent.node or agent.host)
    if not elsewhere:
        return []
    where = ", ".join(f"{dc!r} ({_names(nodes)})" for dc, nodes in sorted(elsewhere.items()))
    why = (
        f"datacenter: the running agents are in datacenter {where}, the document says {wanted!r}; "
        "Consul's gossip refuses members of another datacenter, so each agent replaced would be cut off "
        "from the rest, and the servers' data belongs to the old datacenter"
    )
    return [Danger(acknowledgement(ACK_DATACENTER), why)]


def _gossip_key(agents: list[RunningAgent], wanted: str | None) -> list[Danger]:
    other = sorted({a.gossip for a in agents if a.gossip_known and a.gossip != wanted}, key=str)
    if not other:
        return []
    nodes = [a.node or a.host for a in agents if a.gossip_known and a.gossip != wanted]
    old = " and ".join(_reference(ref) for ref in other)
    why = (
        f"gossip key: the running agents ({_names(nodes)}) use {old}, the document {_reference(wanted)}; "
        "agents with different keys cannot gossip, and an agent whose data folder holds a keyring keeps "
        "its old key (rotate a key with `consul keyring` instead). Only the reference is compared: a new "
        "key under the same reference is not seen"
    )
    return [Danger(acknowledgement(ACK_GOSSIP_KEY), why)]


def _per_host(
    agents: list[RunningAgent], wanted: Mapping[str, ContainerSpec], order: list[str]
) -> list[Danger]:
    place = {name: index for index, name in enumerate(order)}
    found: list[Danger] = []
    for agent in sorted(agents, key=lambda a: place.get(a.host, len(place))):
        spec = wanted[agent.host]
        if not agent.server:
            continue
        if spec.role == "client":
            node = f" (node {agent.node!r})" if agent.node and agent.node != agent.host else ""
            why = (
                f"server to client: {agent.host} runs a server{node}, the document makes it a client; the "
                "cluster loses a voter and the raft data in its data folder is left behind"
            )
            found.append(Danger(acknowledgement(ACK_SERVER_TO_CLIENT, agent.host), why))
        elif agent.node is not None and agent.node != spec.node:
            why = (
                f"server node name: {agent.host} runs server {agent.node!r}, the document names it "
                f"{spec.node!r}; the server would come back as a new member under the node ID kept in its "
                "data folder (Consul can refuse a node ID it knows under another name), and the old name's "
                "catalog entries and sessions are lost"
            )
            found.append(Danger(acknowledgement(ACK_NODE_NAME, agent.host), why))
    return found


def _removals(agents: list[RunningAgent], wanted: Mapping[str, ContainerSpec]) -> list[Danger]:
    servers = [a for a in agents if a.server]
    going = [a for a in servers if a.host not in wanted or wanted[a.host].role != "server"]
    minority = (len(servers) - 1) // 2
    if not going or len(going) <= minority:  # with no server seen running, the "minority" is -1
        return []
    names = _names([f"{a.node or a.host}: {_why_going(a, wanted)}" for a in going])
    advice = f"remove at most {minority} per document" if minority else "none can go without this"
    why = (
        f"servers removed: the document removes {len(going)} of the {len(servers)} running servers "
        f"({names}), more than a minority ({minority}); the servers that stay are no majority of those "
        f"that run now, and cannot elect a leader on their own if the removal goes wrong: {advice}"
    )
    return [Danger(acknowledgement(ACK_REMOVE_SERVERS), why)]


def _why_going(agent: RunningAgent, wanted: Mapping[str, ContainerSpec]) -> str:
    return "made a client" if agent.host in wanted else "host left the topology"


def _reference(ref: str | None) -> str:
    return "no gossip key" if ref is None else f"the key from {ref}"


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
