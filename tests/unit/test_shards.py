"""Sharding's pure parts (reconciler.shards): rendezvous assignment, and which hosts a controller may
act on as a function of (view, itself, time), down to a simulation of controllers whose views lag."""

from __future__ import annotations

import json
import random
from collections import Counter

from reconciler.consul_api import KVEntry
from reconciler.membership import Published, parse_members
from reconciler.shards import Local, Member, View, assign, claim_for, decide, rendezvous

HOSTS = [f"host{i:03d}" for i in range(300)]
MEMBERS = ["ctl-a:101", "ctl-b:202", "ctl-c:303"]
TTL = 10.0
FRESH = TTL / 4
GRACE = 5.0  # the lock-delay: at least TTL/2


def test_rendezvous_is_stable_and_ignores_the_members_order() -> None:
    first = assign(HOSTS, MEMBERS)
    assert first == assign(HOSTS, list(reversed(MEMBERS))) == assign(HOSTS, MEMBERS)
    assert set(first.values()) == set(MEMBERS)
    assert rendezvous("host001", []) is None


def test_rendezvous_balances_300_hosts_over_3_members() -> None:
    counts = Counter(assign(HOSTS, MEMBERS).values())
    # 100 each on average; binomial(300, 1/3) has a standard deviation of 8.2: within 3 of them
    assert all(75 <= n <= 125 for n in counts.values()), counts


def test_a_member_joining_takes_only_its_own_share() -> None:
    before = assign(HOSTS, MEMBERS)
    after = assign(HOSTS, [*MEMBERS, "ctl-d:404"])
    moved = {h for h in HOSTS if before[h] != after[h]}
    assert all(after[h] == "ctl-d:404" for h in moved)  # nothing moves between the others
    assert 50 <= len(moved) <= 100, len(moved)  # a quarter, not a reshuffle


def test_a_member_leaving_gives_away_only_its_own_hosts() -> None:
    before = assign(HOSTS, MEMBERS)
    after = assign(HOSTS, MEMBERS[:2])
    moved = {h for h in HOSTS if before[h] != after[h]}
    assert moved == {h for h in HOSTS if before[h] == "ctl-c:303"}
    spread = Counter(after[h] for h in moved)
    assert set(spread) == set(MEMBERS[:2]) and min(spread.values()) >= len(moved) // 4


def view(*members: Member, at: float = 0.0) -> View:
    return View(tuple(members), 7, at)


def member(identity: str, **kw: object) -> Member:
    return Member(identity, f"s-{identity}", **kw)  # type: ignore[arg-type]


def local(identity: str, **kw: object) -> Local:
    base: dict[str, object] = {"session": f"s-{identity}", "live": True, "leading": False}
    return Local(identity, **(base | kw))  # type: ignore[arg-type]


def test_a_gained_host_waits_the_grace_and_a_lost_one_stops_at_once() -> None:
    hosts = HOSTS[:30]
    two = view(member("a"), member("b"), at=0.0)
    d = decide(hosts, two, local("a"), {}, 0.0, fresh_for=FRESH, grace=GRACE)
    mine = {h for h in hosts if rendezvous(h, ["a", "b"]) == "a"}
    assert d.mine == mine and d.acting == frozenset() and d.next_due == GRACE
    assert all("gained" in d.why[h] for h in mine)
    d = decide(
        hosts, view(member("a"), member("b"), at=4.0), local("a"), d.held, 5.0, fresh_for=FRESH, grace=GRACE
    )
    assert d.acting == mine  # held since 0.0, 5 s ago
    # c joins: what c takes, a stops acting on at once; what a keeps goes on without a pause
    three = view(member("a"), member("b"), member("c"), at=5.5)
    d = decide(hosts, three, local("a"), d.held, 6.0, fresh_for=FRESH, grace=GRACE)
    kept = {h for h in mine if rendezvous(h, ["a", "b", "c"]) == "a"}
    assert d.acting == kept and kept < mine
    assert all(d.why[h] == "owned by c" for h in mine - kept)


def test_nothing_is_acted_on_with_a_stale_view_a_lapsed_session_or_unlisted() -> None:
    hosts = HOSTS[:20]
    held = {h: (0.0, ("hash", "s-a")) for h in hosts}
    fresh = view(member("a"), at=9.0)
    assert decide(hosts, fresh, local("a"), held, 10.0, fresh_for=FRESH, grace=GRACE).acting == set(hosts)
    stale = decide(hosts, view(member("a"), at=7.5), local("a"), held, 10.0, fresh_for=FRESH, grace=GRACE)
    assert stale.acting == frozenset() and stale.held == {} and "old" in stale.why[hosts[0]]
    lapsed = decide(hosts, fresh, local("a", live=False), held, 10.0, fresh_for=FRESH, grace=GRACE)
    assert lapsed.acting == frozenset() and "lapsed" in lapsed.why[hosts[0]]
    other = decide(hosts, fresh, local("a", session="s-new"), held, 10.0, fresh_for=FRESH, grace=GRACE)
    assert other.acting == frozenset() and "not listed" in other.why[hosts[0]]
    assert decide(hosts, None, local("a"), held, 10.0, fresh_for=FRESH, grace=GRACE).acting == frozenset()


def test_the_leaders_claim_and_a_non_leaders_own_exclusions() -> None:
    hosts = ["s1", "s2", "c1", "c2", "c3", "c4", "gone"]
    claim = frozenset({"s1", "s2", "gone"})
    listing = view(member("a", leader_index=3, claim=claim), member("b"), at=0.0)
    assert {h for h, o in listing.owners(hosts).items() if h in claim} == {"s1", "s2", "gone"}
    assert all(listing.owner(h) == "a" for h in claim)
    leader = local("a", leading=True, leader_index=3, cluster_hosts=claim)
    held: dict[str, tuple[float, tuple[object, ...]]] = {}
    d = decide(hosts, listing, leader, held, 0.0, fresh_for=FRESH, grace=GRACE)
    listing = view(*listing.members, at=GRACE - 1)
    d = decide(hosts, listing, leader, d.held, GRACE, fresh_for=FRESH, grace=GRACE)
    assert claim <= d.acting
    # the lock lost (or a newer lock index): the claimed hosts stop at once
    d2 = decide(hosts, listing, local("a"), d.held, GRACE + 0.1, fresh_for=FRESH, grace=GRACE)
    assert not claim & d2.acting and "no longer leads" in d2.why["s1"]
    d3 = decide(
        hosts, listing, local("a", leading=True, leader_index=4), d.held, GRACE, fresh_for=FRESH, grace=GRACE
    )
    assert not claim & d3.acting
    # no leader claims: a non-leader keeps out of its own document's server hosts and flagged ones
    plain = view(member("b"), at=0.0)
    b = local("b", cluster_hosts=frozenset({"s1"}), flags=frozenset({"c1"}))
    d = decide(hosts, plain, b, {}, 0.0, fresh_for=FRESH, grace=GRACE)
    assert "s1" not in d.mine and "c1" not in d.mine and {"c2", "c3"} <= d.mine


def test_a_host_that_flips_away_and_back_waits_again() -> None:
    hosts = HOSTS[:40]
    d = decide(hosts, view(member("a"), at=0.0), local("a"), {}, 0.0, fresh_for=FRESH, grace=GRACE)
    d = decide(hosts, view(member("a"), at=6.0), local("a"), d.held, 6.0, fresh_for=FRESH, grace=GRACE)
    assert d.acting == set(hosts)
    d = decide(
        hosts, view(member("a"), member("b"), at=6.5), local("a"), d.held, 6.5, fresh_for=FRESH, grace=GRACE
    )
    went = set(hosts) - d.mine
    assert went
    d = decide(hosts, view(member("a"), at=7.0), local("a"), d.held, 7.0, fresh_for=FRESH, grace=GRACE)
    assert not went & d.acting and d.next_due == 7.0 + GRACE


def test_the_claim_keeps_a_host_until_the_leader_saw_it_without_a_server() -> None:
    assert claim_for({"s1"}, {"c1"}, set(), set()) == {"s1", "c1"}
    assert claim_for({"s1"}, set(), {"s1", "c1"}, set()) == {"s1", "c1"}  # the flag went: kept
    assert claim_for({"s1"}, set(), {"s1", "c1"}, {"c1", "s1"}) == {"s1"}  # seen clean: given back


def test_member_keys_are_read_as_members() -> None:
    prefix = "t.members/"
    value = Published(3, frozenset({"h1"}), frozenset({"h2"})).value("a:1", "s1")
    entries = [
        KVEntry(prefix + "a:1", value, 20, 1, 0, "s1", create_index=12),
        KVEntry(prefix + "b:2", None, 30, 1, 0, "s2", create_index=30),
        KVEntry(prefix + "gone:3", b"{}", 31, 1, 0, None),  # no session: nobody
        KVEntry(prefix + "junk:4", b"[1,", 32, 1, 0, "s4"),
    ]
    members = parse_members(prefix, entries)
    assert [m.identity for m in members] == ["a:1", "b:2", "junk:4"]
    a = members[0]
    assert (a.leader_index, a.index) == (3, 12) and a.claim == {"h1"} and a.flags == {"h2"}
    assert json.loads(value)["identity"] == "a:1"


# --- a simulation: controllers whose views lag behind Consul, members joining, leaving, killed -------


class Sim:
    """Consul's truth as a timeline of member sets; each controller sees it as of a moment at most F ago
    (the send time of its last answered query), and decides every step with what it holds. A controller
    cut off from Consul keeps deciding with the last view it got (its session's lapse is left out: the
    view's age alone must stop it)."""

    STEP = 0.1

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.timeline: list[tuple[float, frozenset[str]]] = [(0.0, frozenset())]
        self.seen_at: dict[str, float] = {}
        self.held: dict[str, dict[str, tuple[float, tuple[object, ...]]]] = {}
        self.alive: set[str] = set()  # processes running (they may still be members or not)
        self.cut: set[str] = set()  # running, but cut off from Consul: their view no longer moves

    def truth(self, at: float) -> frozenset[str]:
        members = self.timeline[0][1]
        for when, state in self.timeline:
            if when <= at:
                members = state
        return members

    def change(self, at: float, members: frozenset[str]) -> None:
        self.timeline.append((at, members))

    def step(self, now: float, hosts: list[str]) -> dict[str, frozenset[str]]:
        acting: dict[str, frozenset[str]] = {}
        for ctl in sorted(self.alive):
            # the newest answer it holds came from a query sent at most F ago (sometimes just under)
            lag = self.rng.uniform(0.0, FRESH * 0.999)
            asked = max(self.seen_at.get(ctl, 0.0), now - lag)
            if ctl in self.cut:
                asked = self.seen_at[ctl]
            self.seen_at[ctl] = asked
            members = self.truth(asked)
            listing = View(tuple(Member(m, f"s-{m}") for m in sorted(members)), 1, asked)
            d = decide(hosts, listing, local(ctl), self.held.get(ctl, {}), now, fresh_for=FRESH, grace=GRACE)
            self.held[ctl] = dict(d.held)
            acting[ctl] = d.acting
        return acting


def test_simulated_joins_leaves_and_kills_never_give_a_host_two_actors() -> None:
    hosts = HOSTS[:16]
    for seed in range(4):
        sim = Sim(seed)
        rng = random.Random(seed)
        now, end = 0.0, 100.0
        events: list[tuple[float, str, str]] = []
        for name in ("a", "b", "c", "d"):
            events.append((rng.uniform(0, 30), "join", name))
            events.append((rng.uniform(40, 110), rng.choice(["leave", "kill", "cut"]), name))
        events.sort()
        pending_removal: list[tuple[float, str]] = []
        moved = 0
        last: dict[str, frozenset[str]] = {}
        while now < end:
            for when, what, name in [e for e in events if e[0] <= now]:
                events.remove((when, what, name))
                members = sim.truth(now)
                if what == "join":
                    sim.alive.add(name)
                    sim.change(now, members | {name})
                elif what == "leave":  # stops acting, then destroys its session: the key goes at once
                    sim.alive.discard(name)
                    sim.change(now, members - {name})
                elif what == "kill":  # its key goes when Consul invalidates the session, TTL..2 TTL later
                    sim.alive.discard(name)
                    pending_removal.append((now + rng.uniform(TTL, 2 * TTL), name))
                else:  # cut off, still running: its key goes at any time (its node deregistered, even)
                    sim.cut.add(name)
                    pending_removal.append((now + rng.uniform(0, 2 * TTL), name))
            for when, name in list(pending_removal):
                if when <= now:
                    pending_removal.remove((when, name))
                    sim.change(now, sim.truth(now) - {name})
            acting = sim.step(now, hosts)
            owners: dict[str, str] = {}
            for ctl, mine in acting.items():
                for host in mine:
                    assert host not in owners, f"seed {seed}, t={now:.1f}: {host} by {owners[host]} and {ctl}"
                    owners[host] = ctl
            moved += sum(len(mine - last.get(ctl, frozenset())) for ctl, mine in acting.items())
            last = acting
            now = round(now + Sim.STEP, 3)
        assert moved > 0  # hosts did move
