"""Leader election through a Consul session lock (Consul's documented pattern).

Each controller creates a session with a TTL and tries to take the lock key with
``?acquire``. The holder renews its session every TTL/4; a standby watches the key with
blocking queries and tries again when the lock is free (Consul keeps it unacquirable for
the lock-delay after the holder's session is invalidated).

No window where two act: Consul invalidates a session no sooner than TTL after its last
renewal, so the holder stops *starting* actions once ``LEADING_FRACTION`` x TTL has passed
since the last renewal it sent (conservatively counted from when it was sent) — well before
the lock can be released and, after the lock-delay, taken by a standby. The lock's
LockIndex after acquisition is the fencing token written into every run row.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from reconciler.consul_api import Consul, ConsulError

log = logging.getLogger("consul_reconciler.leader")

LEADING_FRACTION = 0.5


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="leader-lock", daemon=True)
        self.consul = consul
        self.key = key
        self.identity = identity
        self.ttl = ttl
        self.lock_delay = lock_delay
        self._on_change = on_change
        self._clock = clock
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.session: str | None = None
        self.lock_index: int | None = None
        self._leading = False
        self._last_renewal_sent = 0.0

    # --- what the controller asks ------------------------------------------------------------------

    def is_leader(self) -> bool:
        with self._lock:
            fresh = self._clock() - self._last_renewal_sent < self.ttl * LEADING_FRACTION
            return self._leading and fresh

    def fencing(self) -> tuple[str | None, int | None]:
        with self._lock:
            return self.session, self.lock_index

    # --- the loop ----------------------------------------------------------------------------------

    def run(self) -> None:
        delay = 0.5
        while not self._halt.is_set():
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
                delay = 0.5
            except ConsulError as exc:
                log.warning("leader lock %s: %s", self.key, exc)
                self._check_lapse()
                if self._halt.wait(delay):
                    break
                delay = min(self.ttl / 4, delay * 2)
        self._resign()

    def _try_acquire(self) -> None:
        assert self.session is not None
        value = json.dumps({"holder": self.identity, "session": self.session}).encode()
        sent = self._clock()
        if self.consul.put(self.key, value, acquire=self.session):
            _, entry = self.consul.get(self.key)
            with self._lock:
                self._leading = True
                self._last_renewal_sent = sent
                self.lock_index = entry.lock_index if entry else None
            log.info("leader: took %s (LockIndex %s)", self.key, self.lock_index)
            self._on_change(True)
            return
        # A standby: renew our own session, and wait (blocking query) for the lock to be free.
        self._renew()
        index, entry = self.consul.get(self.key)
        if entry is not None and entry.session:
            self.consul.get(self.key, index=index, wait=f"{max(1, int(self.ttl / 3))}s")
        else:
            self._halt.wait(min(1.0, self.lock_delay / 4))  # free, but maybe inside the lock-delay

    def _hold(self) -> None:
        if self._halt.wait(self.ttl / 4):
            return
        if not self._renew():
            self._lost("the session was invalidated")

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
        if self._leading and not self.is_leader():
            self._lost(f"no renewal for {self.ttl * LEADING_FRACTION:.1f}s")

    def _lost(self, why: str) -> None:
        with self._lock:
            was = self._leading
            self._leading = False
        if was:
            log.warning("leader: lost %s (%s); no new action starts", self.key, why)
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

    def stop(self) -> None:
        self._halt.set()
