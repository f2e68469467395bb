"""What the running controller tells its console as it works: written by the pass thread, read by the
HTTP threads. Every change bumps a generation number; the console's event stream waits on it, so an
open page learns of a pass the moment it ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from reconciler.console.memory import HostSeen, remember
from reconciler.gates import GateLook
from reconciler.one_pass import PassResult
from reconciler.plan import Plan

LOOK_EVERY = 0.5  # seconds: a gate looks four times a second; pages follow at most twice a second


class ConsoleFeed:
    def __init__(
        self,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._changed = threading.Condition()
        self._clock = clock
        self._monotonic = monotonic
        self._closed = False
        self._look_bumped = 0.0
        self.generation = 0
        self.hosts: dict[str, HostSeen] = {}  # replaced whole, never changed in place
        self.plan: Plan | None = None  # of the pass in progress, else of the last one
        self.plan_at: datetime | None = None
        self.in_pass = False
        self.look: GateLook | None = None  # the last look of a health gate
        self.look_at: datetime | None = None
        self.last_pass_at: datetime | None = None

    # --- the pass thread -----------------------------------------------------------------------------

    def planned(self, plan: Plan) -> None:
        self.plan, self.plan_at, self.in_pass = plan, self._clock(), True
        self.look = None
        self._bump()

    def looked(self, look: GateLook) -> None:
        self.look, self.look_at = look, self._clock()
        now = self._monotonic()
        if now - self._look_bumped >= LOOK_EVERY:
            self._look_bumped = now
            self._bump()

    def passed(self, result: PassResult) -> None:
        now = self._clock()
        self.hosts = remember(self.hosts, result, now)
        self.plan, self.in_pass, self.last_pass_at = result.plan, False, now
        self._bump()

    def changed(self) -> None:
        """Something else the pages show changed (a rollout paused or resumed, a pass that stopped)."""
        self.in_pass = False
        self._bump()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    # --- the HTTP threads ----------------------------------------------------------------------------

    def wait(self, seen: int, timeout: float) -> int | None:
        """The generation once it is past ``seen`` (or ``seen`` after ``timeout`` seconds); None once
        the controller stops."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self.generation != seen, timeout)
            return None if self._closed else self.generation

    def _bump(self) -> None:
        with self._changed:
            self.generation += 1
            self._changed.notify_all()
