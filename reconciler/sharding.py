"""The controller's side of sharding (``run --shard``): what the membership (reconciler.membership) and
the pure decisions (reconciler.shards) mean for one pass and for each action.

- At the start of a pass, :meth:`Shard.prepare` works out the cluster-wide hosts this controller's
  document knows (server hosts, hosts that left the topology), publishes its claim when it leads and
  its flags, and decides which hosts it may act on now; every other host is *deferred* for the pass
  (not observed, no action: the pass's existing mechanism for hosts left alone).
- Right before every action, :meth:`Shard.may_act` decides again, with the view and the clock of that
  moment (the executor's ownership hook).
- A server found on a host it owns without leading: the host is flagged at once (no action on it from
  then on) and handed to the leader through the member key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from desired_state.load import Loaded
from reconciler.actual import ObservedFleet
from reconciler.leader import LeaderLock
from reconciler.membership import Membership, Published
from reconciler.plan import Action, Plan
from reconciler.shards import Decision, Local, claim_for, decide

log = logging.getLogger("consul_reconciler.sharding")


def carries_server(action: Action) -> bool:
    """Does this action touch a Consul server (desired or running)?"""
    running = action.observed is not None and action.observed.role == "server"
    return (
        running or action.role == "server" or (action.desired is not None and action.desired.role == "server")
    )


def server_hosts_seen(observed: ObservedFleet, cluster: str) -> frozenset[str]:
    """The observed hosts on which a container of this cluster's runs as a Consul server."""
    return frozenset(
        seen.name
        for seen in observed.hosts
        if any(c.role == "server" and c.managed_by == cluster for c in seen.managed)
    )


class Shard:
    def __init__(
        self,
        membership: Membership,
        lock: LeaderLock,
        on_gain: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_gain(after)``: ask for a pass in ``after`` seconds (when a gained host's wait ends)."""
        self.membership = membership
        self.lock = lock
        self.identity = membership.identity
        self.grace = membership.lock_delay
        self._on_gain = on_gain
        self._clock = clock
        self._mutex = threading.Lock()
        self._held: dict[str, tuple[float, tuple[object, ...]]] = {}
        self._hosts: tuple[str, ...] = ()
        self._cluster_hosts: frozenset[str] = frozenset()
        self._flags: frozenset[str] = frozenset()
        self._claim: frozenset[str] = frozenset()
        self._clean: frozenset[str] = frozenset()  # claimed hosts the leader observed without a server
        self._acting: frozenset[str] = frozenset()
        self.last: Decision | None = None
        self._live = False  # a live member at the membership's last word
        self._due: float | None = None  # the follow-up pass asked for (when a gained host's wait ends)

    # --- the facts of a pass --------------------------------------------------------------------

    def prepare(self, loaded: Loaded, known: Iterable[str]) -> dict[str, str]:
        """Before a pass: publish, decide, and return the hosts this pass leaves alone (host -> why)."""
        topology = loaded.topology
        desired = [h.name for h in topology.hosts]
        left = frozenset(known) - frozenset(desired)
        servers = frozenset(h.name for h in topology.hosts if h.role == "server")
        leading = self.lock.is_leader()
        _, _, view = self.membership.current()
        with self._mutex:
            self._hosts = tuple(dict.fromkeys([*desired, *sorted(left)]))
            self._cluster_hosts = servers | left
            if view is not None and leading:
                claim = claim_for(self._cluster_hosts, view.flagged(), self._claim, self._clean)
            else:
                claim = frozenset()
            self._claim = claim
            # a flag stays until the leader's claim (as listed) holds the host
            leader = view.leader() if view is not None else None
            if leader is not None:
                self._flags = self._flags - leader.claim
            flags = self._flags
        self._publish(leading, claim, flags)
        decision = self.refresh()
        return {h: why for h, why in decision.why.items() if h not in decision.acting}

    def planned(self, plan: Plan) -> None:
        """The plan of a pass, before anything is done: a non-leader flags the hosts where it would
        touch a server (and so stops acting on them at once)."""
        if self.lock.is_leader():
            return
        found = frozenset(a.host for a in plan.actions if carries_server(a))
        if not found - self._flags:
            return
        with self._mutex:
            self._flags = self._flags | found
            flags = self._flags
        log.warning("hosts carrying a Consul server, handed to the leader: %s", ", ".join(sorted(found)))
        self._publish(False, frozenset(), flags)
        self.refresh()

    def observed(self, observed: ObservedFleet, cluster: str) -> None:
        """After a pass: the claimed hosts it observed without a server may leave the claim."""
        seen = {h.name for h in observed.hosts if h.reachable}
        with_server = server_hosts_seen(observed, cluster)
        with self._mutex:
            self._clean = frozenset((self._claim & seen) - with_server)

    def _publish(self, leading: bool, claim: frozenset[str], flags: frozenset[str]) -> None:
        index = self.lock.fencing()[1] if leading else None
        self.membership.publish(Published(index if leading else None, claim, flags))

    # --- decisions ------------------------------------------------------------------------------

    def refresh(self) -> Decision:
        """Decide again with the view and the clock of now; asks for a pass when hosts were gained."""
        session, live, view = self.membership.current()
        leading = self.lock.is_leader()
        now = self._clock()
        with self._mutex:
            local = Local(
                self.identity,
                session,
                live,
                leading,
                self.lock.fencing()[1] if leading else None,
                self._cluster_hosts,
                self._flags,
            )
            decision = decide(
                self._hosts,
                view,
                local,
                self._held,
                now,
                fresh_for=self.membership.fresh_for,
                grace=self.grace,
            )
            self._held = dict(decision.held)
            gained = decision.acting - self._acting
            lost = self._acting - decision.acting
            self._acting = decision.acting
            self.last = decision
        if lost:
            log.info("no longer acting on %d host(s): %s", len(lost), _few(lost))
        if gained:
            log.info("now acting on %d host(s): %s", len(gained), _few(gained))
            self._on_gain(0.0)
        if decision.next_due is not None and decision.next_due != self._due:
            self._due = decision.next_due
            self._on_gain(max(0.0, decision.next_due - now) + 0.05)
        return decision

    def refreshed(self) -> None:
        """The membership's word that its view or session changed: decide again; a controller that has
        just become a live member (again) asks for a pass (the one it skipped meanwhile)."""
        live = self.lapsed() is None
        if live and not self._live:
            self._on_gain(0.0)
        self._live = live
        self.refresh()

    def may_act(self, host: str) -> str | None:
        """Right before an action on ``host``: None if this controller may act on it now, else why not."""
        decision = self.refresh()
        if host in decision.acting:
            return None
        return f"host {host} is not this controller's to act on now ({decision.why.get(host) or 'not owned'})"

    def lapsed(self) -> str | None:
        """Why this controller may act on no host at all now (None: it may act on its own)."""
        session, live, view = self.membership.current()
        if session is None or not live:
            return "this controller's membership session lapsed"
        if view is None or self._clock() - view.asked_at >= self.membership.fresh_for:
            return "this controller's member listing is stale"
        return None

    def owners(self) -> dict[str, str | None]:
        """host -> owner, as this controller last decided (for status and the console)."""
        decision = self.last
        return dict(decision.owners) if decision is not None else {}

    def acting(self) -> frozenset[str]:
        return self._acting


def _few(hosts: Iterable[str], most: int = 8) -> str:
    names = sorted(hosts)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")
