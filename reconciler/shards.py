"""Several controllers of one cluster: which hosts each may act on, and when (pure: no Consul, no clock).

The shell is reconciler.membership (a Consul session, a member key, a blocking listing of the members);
this module decides, from what that listing shows (a :class:`View`) and what the controller knows of
itself (a :class:`Local`), which hosts the controller owns and which it may act on now.

**Assignment.** Each host goes to one live member by rendezvous (highest-random-weight) hashing: every
member scores every host with a hash of (member, host), the highest score owns it. A member that joins
takes only the hosts it now scores highest on; a member that goes gives only its own hosts away, spread
over the others; nothing else moves. The cluster-wide work (the server rollout: every host carrying a
Consul server, desired or observed, and the hosts that left the topology) is the elected controller's
(the leader lock's holder): it publishes those hosts (its *claim*) in its member key with the lock's
LockIndex; the claim with the highest LockIndex counts. A member that finds a server on one of its hosts
stops acting on it at once and *flags* it in its member key; the leader adds flagged hosts to its claim
and keeps each claimed host until it has observed it without a server.

**No host is acted on by two controllers at once.** Let T be the session TTL, F = T/4 the longest a
view may be old (counted from when the query that brought it was *sent*), G = the lock-delay (>= T/2,
reconciler.leader.lock_timing_problem) the wait of a controller gaining a host. A controller acts on a
host only while all of these hold, checked right before every action (Controller -> Executor hook):

1. its session's last renewal was sent less than T/2 ago (the leader lock's rule): Consul invalidates a
   session no sooner than T after its last renewal, so a controller that cannot reach Consul has
   stopped acting before its member key can go;
2. its view is fresh (the listing answering a query sent less than F ago) and lists its own key with its
   current session: a change committed in Consul at time t is in every acting controller's view by
   t + F, or that controller has stopped;
3. the view (and its own word: a non-leader never takes a host its own document makes a server host or
   that left the topology, nor one it flagged; a leader takes a claimed host only while it holds the
   lock) says the host is its own;
4. it has owned the host, on the same basis (same session, same claim), continuously in every view
   since at least G ago. Views are refreshed on every listing answer, so a flip away and back is seen.

Why that is enough. (a) A host moves between live controllers A -> B when Consul commits a change at t
(a join, a claim, a flag). B's view shows it at some g >= t, so B acts from g + G >= t + G; A's view
shows it by t + F, or A stopped (2): A stopped before B starts as G >= T/2 > F. (b) A member dies
(killed or cut off): its key goes only when Consul invalidates its session, no sooner than T after its
last renewal, by when it has stopped for T/2 (1); the gaining controller sees the key gone and still
waits G. A session invalidated sooner (its node deregistered) while its holder cannot reach Consul: that
holder stops by t + F (2) < t + G. (c) A controller whose views skipped a short-lived state in which a
host was another's (it never saw the flip): that other controller X acts only from G after its own gain
(>= t2 + G), and by t2 + F the skipping controller's view holds a state from after t2; it did not see X
owning the host, so the state it holds is from after X lost it (t3 <= t2 + F), and X stopped by t3 + F
<= t2 + 2F <= t2 + G, before it could have started. (d) Leaders: the leader lock keeps two holders from
acting at once (reconciler.leader); a new leader's claim has a higher LockIndex and counts from when it
is listed, with the same G. (e) A document change makes a host a server host: the non-leader's own
document excludes it at once (3); a leader with the newer document claims it, and every other member
sees the claim within F, as in (a). A stale document can only make a controller take a host later.

Consul unreachable: the view and the session lapse, so the controller acts on nothing it owns; only the
leader lock's "no leader can be known" repairs (creating a missing container, starting a stopped one,
which Docker serialises by name) go on, as with a single controller (reconciler.controller).

Timings (T = --lock-ttl, D = --lock-delay): a member that joins or leaves moves hosts within G = D of
the change being listed; a killed member's hosts move within 2T (Consul's invalidation) + D.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

VIEW_FRESH_FRACTION = 0.25  # of the TTL: the oldest view a controller acts on (F)


@functools.lru_cache(maxsize=1 << 16)
def weight(member: str, host: str) -> int:
    """The rendezvous score of ``member`` for ``host``: the same on every controller, for ever. Kept:
    every action of a sharded controller decides again the owner of every host (Sharding.may_act):
    60 ms at 3,000 hosts and 3 controllers with a hash each time, 7 ms with the scores kept."""
    digest = hashlib.blake2b(f"{member}\x00{host}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous(host: str, members: Iterable[str]) -> str | None:
    """The member with the highest score for ``host`` (ties broken by name); None without members."""
    best: tuple[int, str] | None = None
    for member in members:
        score = (weight(member, host), member)
        if best is None or score > best:
            best = score
    return None if best is None else best[1]


def assign(hosts: Iterable[str], members: Collection[str]) -> dict[str, str | None]:
    """host -> its member by rendezvous hashing."""
    return {host: rendezvous(host, members) for host in hosts}


@dataclass(frozen=True)
class Member:
    """One live member key: a controller, its session, and what it publishes."""

    identity: str
    session: str
    index: int = 0  # the raft index its key was created at: its fencing token
    leader_index: int | None = None  # the leader lock's LockIndex, when it claims to lead
    claim: frozenset[str] = frozenset()  # as the leader: the hosts of the cluster-wide work
    flags: frozenset[str] = frozenset()  # hosts it owned and found a server on: for the leader


@dataclass(frozen=True)
class View:
    """The members as one listing answered, and when the query for it was sent (monotonic)."""

    members: tuple[Member, ...]
    index: int
    asked_at: float

    def identities(self) -> list[str]:
        return [m.identity for m in self.members]

    def member(self, identity: str) -> Member | None:
        return next((m for m in self.members if m.identity == identity), None)

    def leader(self) -> Member | None:
        """The member whose claim counts: the highest leader-lock index among those claiming."""
        claiming = [m for m in self.members if m.leader_index is not None]
        return max(claiming, key=lambda m: (m.leader_index or 0, m.identity), default=None)

    def flagged(self) -> frozenset[str]:
        return frozenset().union(*(m.flags for m in self.members))

    def owner(self, host: str) -> str | None:
        """Who owns ``host`` as this view says (the claim first, then rendezvous); None: nobody."""
        leader = self.leader()
        if leader is not None and host in leader.claim:
            return leader.identity
        return rendezvous(host, self.identities())

    def owners(self, hosts: Iterable[str]) -> dict[str, str | None]:
        leader = self.leader()
        claim = leader.claim if leader is not None else frozenset()
        names = self.identities()
        return {h: leader.identity if leader and h in claim else rendezvous(h, names) for h in hosts}


@dataclass(frozen=True)
class Local:
    """What a controller knows of itself at a moment."""

    identity: str
    session: str | None  # its member session (None: not a member now)
    live: bool  # its session's last renewal was sent less than T/2 ago
    leading: bool  # it holds the leader lock (and may act as the leader) now
    leader_index: int | None = None  # that lock's LockIndex
    cluster_hosts: frozenset[str] = frozenset()  # its own word: its document's server hosts, left hosts
    flags: frozenset[str] = frozenset()  # hosts it found a server on


def claim_for(
    required: Collection[str],
    flagged: Collection[str],
    previous: Collection[str],
    observed_clean: Collection[str],
) -> frozenset[str]:
    """The leader's claim: the hosts its document needs (server hosts, left hosts), the hosts members
    flagged, and every host it claimed before until it observed it without a server."""
    kept = set(previous) - set(observed_clean)
    return frozenset(required) | frozenset(flagged) | frozenset(kept)


@dataclass(frozen=True)
class Decision:
    owners: Mapping[str, str | None]  # host -> its owner as the view says (None: nobody, or no view)
    mine: frozenset[str]  # owned by this controller now
    acting: frozenset[str]  # owned, and long enough: it may act on these now
    held: Mapping[str, tuple[float, tuple[object, ...]]]  # host -> (owned since, on what basis)
    why: Mapping[str, str] = field(default_factory=dict)  # host -> why it is not acted on now
    next_due: float | None = None  # when the next owned host's wait ends


def decide(
    hosts: Iterable[str],
    view: View | None,
    local: Local,
    held: Mapping[str, tuple[float, tuple[object, ...]]],
    now: float,
    *,
    fresh_for: float,
    grace: float,
) -> Decision:
    """Which of ``hosts`` this controller owns and may act on at ``now``, and the new ``held`` (pass it
    back next time: the wait of a gained host counts from the first decision that found it owned)."""
    names = list(dict.fromkeys(hosts))
    own = view.member(local.identity) if view is not None else None
    problem = None
    if view is None:
        problem = "no member listing yet"
    elif now - view.asked_at >= fresh_for:
        problem = f"the member listing is {now - view.asked_at:.1f}s old (limit {fresh_for:g}s)"
    elif not local.live or local.session is None:
        problem = "this controller's membership session lapsed"
    elif own is None or own.session != local.session:
        problem = "this controller is not listed as a member"
    if problem is not None or view is None:
        owners: dict[str, str | None] = view.owners(names) if view is not None else dict.fromkeys(names)
        return Decision(owners, frozenset(), frozenset(), {}, dict.fromkeys(names, problem or ""))
    owners = view.owners(names)
    leader = view.leader()
    mine: set[str] = set()
    basis: dict[str, tuple[object, ...]] = {}
    why: dict[str, str] = {}
    for host in names:
        owner = owners[host]
        claimed = leader is not None and host in leader.claim
        if owner != local.identity:
            why[host] = f"owned by {owner}" if owner else "no owner: the cluster-wide work waits for a leader"
            continue
        if claimed:
            assert leader is not None
            if not local.leading or local.leader_index != leader.leader_index:
                why[host] = "claimed for the leader, and this controller no longer leads"
                continue
            basis[host] = ("claim", local.session, leader.leader_index)
        else:
            if not local.leading and (host in local.cluster_hosts or host in local.flags):
                why[host] = "a host of the cluster-wide work (a server's, or one that left): the leader's"
                continue
            basis[host] = ("hash", local.session)
        mine.add(host)
    new_held: dict[str, tuple[float, tuple[object, ...]]] = {}
    acting: set[str] = set()
    due: float | None = None
    for host in sorted(mine):
        since, was = held.get(host, (now, basis[host]))
        if was != basis[host]:
            since = now
        new_held[host] = (since, basis[host])
        if now - since >= grace:
            acting.add(host)
        else:
            ready = since + grace
            why[host] = f"gained {now - since:.1f}s ago; acting once {grace:g}s have passed"
            due = ready if due is None else min(due, ready)
    return Decision(owners, frozenset(mine), frozenset(acting), new_held, why, due)
