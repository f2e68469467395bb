"""Leader election through a Consul session lock (Consul's documented pattern).

Each controller creates a session with a TTL and tries to take the lock key with
``?acquire``. The holder renews its session every TTL/4; a standby watches the key with
blocking queries and tries again when the lock is free (Consul keeps it unacquirable for
the lock-delay after the holder's session is invalidated).

No window where two act:
- Consul invalidates a session no sooner than TTL after its last renewal, so the holder stops
  *starting* actions once ``LEADING_FRACTION`` x TTL has passed since the last renewal it sent
  (conservatively counted from when it was sent): well before the lock can be released and,
  after the lock-delay, taken by a standby.
- The holder watches its key with blocking queries, as Consul's own lock recipe does
  (api/lock.go, monitorLock): the moment the key is deleted, released or names another session,
  it stops starting actions and goes back to standby. A session is also invalidated when its node
  is deregistered (the key is then released, and seen so by the watch).
- Taking a key whose previous holder's session is still alive (its key was deleted or released
  by hand, which starts no lock-delay) the new holder waits ``LEADING_FRACTION`` x TTL before it
  acts: the longest an old holder that cannot see the key goes on before it stops by itself.
- The lock-delay must be at least ``LEADING_FRACTION`` x TTL (:func:`lock_timing_problem`): a
  session invalidated at once (its node deregistered) while its holder cannot reach Consul leaves
  that holder acting for up to that long, and the lock-delay is what keeps a standby out meanwhile.

The lock's LockIndex after acquisition is the fencing token written into every run row.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from reconciler.backoff import Reconnect
from reconciler.consul_api import Consul, ConsulError, ConsulRefused

log = logging.getLogger("consul_reconciler.leader")

LEADING_FRACTION = 0.5
MAX_LOCK_DELAY = 60.0  # Consul caps a session's LockDelay at 60 s (agent/structs: MaxLockDelay)
MIN_WATCH = 0.05  # seconds: the shortest blocking wait asked of Consul


def lock_timing_problem(ttl: float, lock_delay: float) -> str | None:
    """Why this TTL and lock-delay cannot keep two controllers from acting at once (None: they can)."""
    floor = ttl * LEADING_FRACTION
    if lock_delay < floor:
        return (
            f"--lock-delay {lock_delay:g}s is below {floor:g}s (half the --lock-ttl {ttl:g}s): when Consul "
            "invalidates the leader's session at once (its node deregistered) while the leader cannot "
            "reach Consul, the leader goes on for up to half the TTL, and only the lock-delay keeps a "
            "standby from acting meanwhile"
        )
    if lock_delay > MAX_LOCK_DELAY:
        return f"--lock-delay {lock_delay:g}s is above Consul's limit of {MAX_LOCK_DELAY:g}s (Consul caps it)"
    return None


def lock_key_for(source_key: str) -> str:
    """The leader lock's key for a desired state kept at ``source_key``."""
    return f"{source_key}.leader"


def live_holder(consul: Consul, key: str) -> str | None:
    """Who holds the lock ``key`` with a session Consul still knows (the holder's identity as it wrote
    it, else its session id); None when nobody does."""
    _, entry = consul.get(key)
    if entry is None or not entry.session or not consul.session_alive(entry.session):
        return None
    try:
        holder = json.loads(entry.value or b"{}").get("holder")
    except (ValueError, AttributeError):
        holder = None
    return str(holder or f"session {entry.session}")


def _go_duration(seconds: float) -> str:
    return f"{max(MIN_WATCH, seconds) * 1000:.0f}ms"


class LeaderLock(threading.Thread):
    def __init__(
        self,
        consul: Consul,
        key: str,
        identity: str,
        *,
        ttl: float = 15.0,
        lock_delay: float = 15.0,
        on_change: Callable[[bool], None] = lambda leading: None,
        on_fatal: Callable[[str], None] = lambda why: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        problem = lock_timing_problem(ttl, lock_delay)
        if problem is not None:
            raise ValueError(problem)
        super().__init__(name="leader-lock", daemon=True)
        self.consul = consul
        self.key = key
        self.identity = identity
        self.ttl = ttl
        self.lock_delay = lock_delay
        self._on_change = on_change
        self._on_fatal = on_fatal
        self._clock = clock
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.session: str | None = None
        self.lock_index: int | None = None
        self.fatal: str | None = None
        self._leading = False
        self._announced = False  # on_change(True) sent for this term of leadership
        self._acting_from = 0.0  # clock time from which a new holder acts (the takeover grace)
        self._last_renewal_sent = 0.0
        self._key_index = 0
        self._last_holder: str | None = None  # another session seen holding the key, as a standby
        self._consul_ok: bool | None = None  # the last exchange with Consul worked (None: none yet)
        self.last_contact: float | None = None  # clock time of the last successful exchange
        self.last_beat: float = clock()  # clock time the loop last went round (answered or not)

    # --- what the controller asks ------------------------------------------------------------------

    def is_leader(self) -> bool:
        with self._lock:
            now = self._clock()
            fresh = now - self._last_renewal_sent < self.ttl * LEADING_FRACTION
            return self._leading and fresh and now >= self._acting_from

    def fencing(self) -> tuple[str | None, int | None]:
        with self._lock:
            return self.session, self.lock_index

    def leader_unknown(self) -> bool:
        """No leader can be known: this controller does not lead and Consul did not answer its last
        request (or answered that it has no leader itself). Only repairs that Docker serialises by
        name (create a missing container, start a stopped one) may run then."""
        return self._consul_ok is False and not self.is_leader()

    def confirm(self) -> str | None:
        """Right before a server is disrupted: does Consul (a consistent read) still give the lock key
        to this controller's session? None if so, else why not (and this controller stands down)."""
        if not self.is_leader():
            return "this controller is no longer the leader"
        try:
            _, entry = self.consul.get(self.key, consistent=True)
        except ConsulError as exc:
            return f"Consul could not confirm the leadership: {exc}"
        if entry is None or entry.session != self.session:
            self._lost("Consul no longer gives the lock key to this session")
            return "Consul no longer gives the lock key to this controller's session"
        return None

    # --- the loop ----------------------------------------------------------------------------------

    def run(self) -> None:
        backoff = Reconnect(first=0.5, cap=self.ttl / 4)
        while not self._halt.is_set():
            self.last_beat = self._clock()
            try:
                if self.session is None:
                    sent = self._clock()
                    self.session = self.consul.create_session(
                        f"consul-reconciler {self.identity}", self.ttl, self.lock_delay
                    )
                    self._last_renewal_sent = sent
                if self._leading:
                    self._hold()
                else:
                    self._try_acquire()
                backoff.reset()
                self._consul_ok, self.last_contact = True, self._clock()
            except ConsulRefused as exc:
                self.fatal = str(exc)
                log.error("leader lock %s: %s", self.key, exc)
                self._lost("Consul refused the leader session")
                self._on_fatal(str(exc))
                break
            except ConsulError as exc:
                self._consul_ok = False
                log.warning("leader lock %s: %s", self.key, exc)
                if "invalid session" in str(exc).lower():
                    self.session = None  # Consul no longer knows it (expired while away): make a new one
                self._check_lapse()
                if self._halt.wait(backoff.next_delay()):
                    break
        self._resign()

    def _try_acquire(self) -> None:
        assert self.session is not None
        value = json.dumps({"holder": self.identity, "session": self.session}).encode()
        sent = self._clock()
        if self.consul.put(self.key, value, acquire=self.session):
            index, entry = self.consul.get(self.key)
            grace = 0.0
            previous = self._last_holder
            if previous and previous != self.session and self.consul.session_alive(previous):
                grace = self.ttl * LEADING_FRACTION
                log.warning(
                    "leader: took %s from session %s, which is still alive (the key was deleted or "
                    "released by hand); acting in %.1fs, by when that holder has stopped",
                    self.key,
                    previous,
                    grace,
                )
            with self._lock:
                self._leading = True
                self._announced = False
                # an acquire does not reset the session's TTL (only a renewal does): the freshness
                # still counts from the last renewal sent
                self._acting_from = sent + grace
                self._key_index = index
                self.lock_index = entry.lock_index if entry else None
            self._last_holder = None
            log.info("leader: took %s (LockIndex %s)", self.key, self.lock_index)
            self._announce()
            return
        # A standby: renew our own session, and wait (blocking query) for the lock to be free.
        self._renew()
        index, entry = self.consul.get(self.key)
        if entry is not None and entry.session:
            if entry.session != self.session:
                self._last_holder = entry.session
            self.consul.get(self.key, index=index, wait=f"{max(1, int(self.ttl / 3))}s")
        else:
            self._halt.wait(min(1.0, self.lock_delay / 4))  # free, but maybe inside the lock-delay

    def _hold(self) -> None:
        """Watch the key until the next renewal is due; stop leading the moment it is not ours."""
        due = self._last_renewal_sent + self.ttl / 4
        while not self._halt.is_set():
            now = self._clock()
            if now >= due:
                break
            wait = due - now
            if not self._announced:
                wait = min(wait, self._acting_from - now)
            asked = time.monotonic()
            index, entry = self.consul.get(self.key, index=self._key_index or None, wait=_go_duration(wait))
            if entry is None or entry.session != self.session:
                if entry is None:
                    what = "deleted"
                elif entry.session:
                    what = f"taken by session {entry.session}"
                else:
                    what = "released"
                self._lost(f"the lock key was {what}")
                return
            unchanged = index == self._key_index
            self._key_index = index if index >= self._key_index else 0  # backwards: start over
            self._announce()
            if unchanged and time.monotonic() - asked < MIN_WATCH:
                self._halt.wait(MIN_WATCH)  # an immediate answer without change: never a hot loop
        if self._halt.is_set():
            return
        if not self._renew():
            self._lost("the session was invalidated")

    def _announce(self) -> None:
        """Tell the controller once the takeover grace is over and this holder may act."""
        with self._lock:
            due = self._leading and not self._announced and self._clock() >= self._acting_from
            if due:
                self._announced = True
        if due:
            self._on_change(True)

    def _renew(self) -> bool:
        if self.session is None:
            return False
        sent = self._clock()
        if self.consul.renew_session(self.session):
            with self._lock:
                self._last_renewal_sent = sent
            return True
        self.session = None
        return False

    def _check_lapse(self) -> None:
        if self._leading and not self.is_leader() and self._clock() >= self._acting_from:
            self._lost(f"no renewal for {self.ttl * LEADING_FRACTION:.1f}s")

    def _lost(self, why: str) -> None:
        with self._lock:
            was = self._leading
            self._leading = False
            announced = self._announced
            self._announced = False
            self._key_index = 0
        if was:
            log.warning("leader: lost %s (%s); no new action starts", self.key, why)
            if announced:
                self._on_change(False)

    def _resign(self) -> None:
        with self._lock:
            self._leading = False
        if self.session is not None:
            try:
                self.consul.release(self.key, self.session)
                self.consul.destroy_session(self.session)
            except ConsulError:
                pass  # it expires by itself
            self.session = None

    def longest_round(self) -> float:
        """The longest one round of the loop may take: a standby's blocking wait, a request's timeout
        and the retry delay, each bounded by a fraction of the TTL."""
        return 2 * self.ttl

    def stop(self) -> None:
        self._halt.set()
