"""The controllers' membership in Consul: a session, a member key bound to it, and the members listing.

Each controller of a cluster (``run --shard`` with a consul:// source) creates a session (TTL = the
lock TTL, lock-delay = the lock's, behaviour *delete*: the key goes with the session) and acquires
``<source key>.members/<identity>`` with it; the value says what it publishes (its claim as the leader,
the hosts it flagged: reconciler.shards). A thread renews the session every TTL/4 and keeps the listing
of ``<source key>.members/`` current with blocking queries (each waits at most TTL/20, so a listing is
never older than TTL/10 plus a round trip while Consul answers). Every call carries the ACL token and
the TLS settings of the source (reconciler.consul_api), as the leader lock's do.

Which hosts are whose, and when a controller may act on them, is decided in reconciler.shards; this
module only keeps the facts fresh and says how fresh they are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.backoff import Reconnect
from reconciler.consul_api import Consul, ConsulError, ConsulRefused, KVEntry
from reconciler.leader import LEADING_FRACTION, MIN_WATCH
from reconciler.shards import Member, View

log = logging.getLogger("consul_reconciler.membership")


def members_prefix(source_key: str) -> str:
    """Where the members of the cluster whose desired state is kept at ``source_key`` list themselves."""
    return f"{source_key}.members/"


def parse_members(prefix: str, entries: list[KVEntry]) -> tuple[Member, ...]:
    """The live members among the keys under ``prefix``: those bound to a session (a key left without
    one, or unreadable, names nobody)."""
    found: list[Member] = []
    for entry in entries:
        if not entry.session or not entry.key.startswith(prefix):
            continue
        try:
            doc = json.loads(entry.value or b"{}")
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        leader_index = doc.get("leader_index")
        found.append(
            Member(
                identity=entry.key[len(prefix) :],
                session=entry.session,
                index=entry.create_index or entry.modify_index,
                leader_index=int(leader_index) if isinstance(leader_index, int) else None,
                claim=frozenset(str(h) for h in doc.get("claim") or []),
                flags=frozenset(str(h) for h in doc.get("flags") or []),
            )
        )
    return tuple(sorted(found, key=lambda m: m.identity))


def read_view(consul: Consul, source_key: str, now: float) -> View:
    """One listing, not blocking (``status``, the console of a process without a membership)."""
    prefix = members_prefix(source_key)
    index, entries = consul.list(prefix)
    return View(parse_members(prefix, entries), index, now)


@dataclass(frozen=True)
class Published:
    leader_index: int | None = None
    claim: frozenset[str] = frozenset()
    flags: frozenset[str] = frozenset()

    def value(self, identity: str, session: str) -> bytes:
        doc = {
            "identity": identity,
            "session": session,
            "leader_index": self.leader_index,
            "claim": sorted(self.claim),
            "flags": sorted(self.flags),
        }
        return json.dumps(doc, sort_keys=True).encode()


class Membership(threading.Thread):
    def __init__(
        self,
        consul: Consul,
        writer: Consul,
        source_key: str,
        identity: str,
        *,
        ttl: float,
        lock_delay: float,
        on_change: Callable[[], None] = lambda: None,
        on_fatal: Callable[[str], None] = lambda why: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``consul`` serves this thread (renewals, the blocking listing); ``writer`` the controller's
        own publications, from its pass thread (a client is not shared between threads)."""
        super().__init__(name="membership", daemon=True)
        self.consul = consul
        self.writer = writer
        self.prefix = members_prefix(source_key)
        self.identity = identity
        self.key = self.prefix + identity
        self.ttl = ttl
        self.lock_delay = lock_delay
        self.fresh_for = ttl * 0.25
        self.watch = max(MIN_WATCH, ttl / 20)
        self.on_change = on_change
        self._on_fatal = on_fatal
        self._clock = clock
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.session: str | None = None
        self.fencing_index: int | None = None
        self.view: View | None = None
        self.fatal: str | None = None
        self._published = Published()
        self._joined = False
        self._last_renewal_sent = 0.0
        self.last_beat = clock()

    # --- what the controller asks ------------------------------------------------------------------

    def live(self) -> bool:
        """The session's last renewal was sent less than TTL/2 ago (Consul keeps it at least TTL)."""
        with self._lock:
            return self.session is not None and self._clock() - self._last_renewal_sent < (
                self.ttl * LEADING_FRACTION
            )

    def current(self) -> tuple[str | None, bool, View | None]:
        """(session, live, view) as of now, read together."""
        live = self.live()
        with self._lock:
            return self.session, live, self.view

    def fencing(self) -> tuple[str | None, int | None]:
        with self._lock:
            return self.session, self.fencing_index

    def publish(self, published: Published) -> None:
        """Write what this controller publishes into its member key (same session: its LockIndex and
        fencing index stay; only the value changes). A failure is only logged: the next pass tries
        again, and a claim not published is only a claim not acted on."""
        with self._lock:
            if published == self._published and self._joined:
                return
            session = self.session
            self._published = published
        if session is None:
            return
        try:
            if not self.writer.put(self.key, published.value(self.identity, session), acquire=session):
                log.warning("membership: could not update %s (its session %s is gone)", self.key, session)
        except ConsulError as exc:
            log.warning("membership: could not update %s: %s", self.key, exc)

    # --- the loop ----------------------------------------------------------------------------------

    def run(self) -> None:
        backoff = Reconnect(first=0.5, cap=self.ttl / 4)
        index = 0
        while not self._halt.is_set():
            self.last_beat = self._clock()
            try:
                if self.session is None or not self._joined:
                    self._join()
                    index = 0
                if self._clock() - self._last_renewal_sent >= self.ttl / 4:
                    self._renew()
                if self.session is None:
                    continue
                asked = self._clock()
                wait = f"{self.watch * 1000:.0f}ms"
                got, entries = self.consul.list(self.prefix, index=index or None, wait=wait)
                view = View(parse_members(self.prefix, entries), got, asked)
                with self._lock:
                    previous, self.view = self.view, view
                index = got if got >= index else 0  # backwards (a restored store): start over
                if previous is None or previous.members != view.members:
                    log.info("membership: %d member(s): %s", len(view.members), ", ".join(view.identities()))
                self.on_change()
                backoff.reset()
            except ConsulRefused as exc:
                self.fatal = str(exc)
                log.error("membership %s: %s", self.key, exc)
                self._on_fatal(str(exc))
                break
            except ConsulError as exc:
                log.warning("membership %s: %s", self.key, exc)
                self.on_change()  # the controller re-decides: a stale view loses every host
                if self._halt.wait(backoff.next_delay()):
                    break
        self._leave()

    def _join(self) -> None:
        if self.session is None:
            sent = self._clock()
            session = self.consul.create_session(
                f"consul-reconciler member {self.identity}", self.ttl, self.lock_delay, behavior="delete"
            )
            with self._lock:
                self.session, self._last_renewal_sent = session, sent
                self._joined = False
        session = self.session
        assert session is not None
        value = self._published.value(self.identity, session)
        if not self.consul.put(self.key, value, acquire=session):
            # another session holds our key: a process before us with the same identity; wait for it
            raise ConsulError(f"{self.key} is held by another session; waiting for it to go")
        _, entry = self.consul.get(self.key)
        with self._lock:
            self._joined = True
            self.fencing_index = entry.create_index if entry else None
        log.info(
            "membership: joined as %s (session %s, fencing index %s)", self.key, session, self.fencing_index
        )

    def _renew(self) -> None:
        session = self.session
        if session is None:
            return
        sent = self._clock()
        if self.consul.renew_session(session):
            with self._lock:
                self._last_renewal_sent = sent
            return
        log.warning("membership: session %s was invalidated; joining again with a new one", session)
        with self._lock:
            self.session, self.fencing_index, self._joined = None, None, False
        self.on_change()

    def _leave(self) -> None:
        with self._lock:
            session, self.session, self._joined = self.session, None, False
        if session is not None:
            # behaviour delete: the member key goes with it (if Consul does not answer, it expires)
            with contextlib.suppress(ConsulError):
                self.consul.destroy_session(session)

    def stop(self) -> None:
        self._halt.set()
