"""Per-host exponential backoff with jitter, the reconnect loops' backoff, and crash-loop detection
(pure; the clock is given)."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace


@dataclass
class BackoffPolicy:
    base: float = 1.0  # seconds after the first failure
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.2  # +- this fraction of the delay

    def delay(self, failures: int, rng: random.Random) -> float:
        raw = min(self.cap, self.base * self.factor ** max(0, failures - 1))
        return max(0.0, raw * (1 + rng.uniform(-self.jitter, self.jitter)))


@dataclass
class Reconnect:
    """The waits of one reconnect loop (a Docker event stream, a Consul watch, the leader lock): the first
    failure waits ``first``, each further one ``factor`` times the last, at most ``cap`` (the first wait
    is ``first`` whatever the cap); a success starts over from ``first``. With ``jitter`` each wait is
    spread by up to that fraction either way (the nominal waits still grow as without it)."""

    first: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _next: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._next = self.first

    @property
    def upcoming(self) -> float:
        """The nominal wait before the next attempt, if the current one fails (no jitter)."""
        return self._next

    def next_delay(self) -> float:
        """The wait after a failure; the one after that grows."""
        delay = self._next
        self._next = min(self.cap, delay * self.factor)
        if self.jitter:
            return delay * self.rng.uniform(1 - self.jitter, 1 + self.jitter)
        return delay

    def reset(self) -> None:
        """An attempt worked: the next failure waits ``first`` again."""
        self._next = self.first


@dataclass
class HostBackoff:
    failures: int = 0
    retry_at: float = 0.0  # monotonic time before which the host is left alone
    last_error: str | None = None
    degraded: bool = False
    unreachable: bool = False  # its last failure: its engine could not be reached

    @property
    def state(self) -> str:
        """One of HOST_STATES: what status, the audit database and the metrics say of the host."""
        if not self.failures:
            return "ok"
        if self.degraded:
            return "degraded"
        return "unreachable" if self.unreachable else "backoff"


# A host's state after a pass (a per-host gauge, host_states in the audit database)
HOST_STATES = ("ok", "unreachable", "backoff", "degraded")


@dataclass
class BackoffTable:
    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    rng: random.Random = field(default_factory=random.Random)
    hosts: dict[str, HostBackoff] = field(default_factory=dict)

    # A host without failures has no entry, and an entry is replaced, never changed in place: a table
    # may start from another's entries (assess: the last pass's history) without copying each one.

    def get(self, host: str) -> HostBackoff:
        """The host's state (a fresh one for a host that has not failed); read it, do not change it."""
        return self.hosts.get(host) or HostBackoff()

    def failed(
        self, host: str, now: float, error: str, *, degraded: bool = False, unreachable: bool = False
    ) -> float:
        """Record a failure; returns the delay until the host may be tried again."""
        state = replace(self.get(host))
        self.hosts[host] = state
        state.failures += 1
        state.last_error = error
        state.degraded = state.degraded or degraded
        state.unreachable = unreachable
        delay = self.policy.delay(state.failures, self.rng)
        state.retry_at = now + delay
        return delay

    def succeeded(self, host: str) -> None:
        self.hosts.pop(host, None)

    def waiting(self, now: float) -> dict[str, HostBackoff]:
        """Hosts still inside their backoff window."""
        return {h: s for h, s in self.hosts.items() if s.failures and s.retry_at > now}

    def next_retry(self, among: Collection[str]) -> float | None:
        """When the first of these hosts in backoff may be tried again; None when none is.

        A time already past is returned too: a pass that deferred a host because its window had not
        ended may finish after it has, and that host still needs its pass (nothing else asks for it).
        """
        pending = [s.retry_at for h, s in self.hosts.items() if s.failures and h in among]
        return min(pending) if pending else None


@dataclass
class CrashLoopDetector:
    """A container we (re)created or started that is being repaired again and again.

    Every successful create/start/replace of (host, container) is noted. When the same
    container needs repair ``attempts`` times within ``window`` seconds, its host is
    reported as crash-looping: the controller marks it degraded and backs off instead of
    recreating it in a tight loop.
    """

    attempts: int = 3
    window: float = 300.0
    _history: dict[tuple[str, str], deque[float]] = field(default_factory=dict)
    # the repairs it resumed from (a pass's history: left as it is, each container's times copied only
    # when it is repaired again; a fleet converged from empty brings thousands, most never repaired)
    _resumed: Mapping[tuple[str, str], Iterable[float]] = field(default_factory=dict)

    @classmethod
    def resumed(
        cls, attempts: int, window: float, history: Mapping[tuple[str, str], Iterable[float]]
    ) -> CrashLoopDetector:
        """A detector that goes on from :meth:`history` (``history`` is left as it is)."""
        return cls(attempts, window, {}, history)

    def history(self, now: float | None = None) -> dict[tuple[str, str], tuple[float, ...]]:
        """The repairs noted, per (host, container), oldest first (a copy). With ``now``, only those
        still inside the window: a container repaired once long ago counts as never repaired, so the
        history of a fleet created once does not stay as long as the fleet, carried on every pass."""
        merged = {key: tuple(times) for key, times in self._resumed.items() if key not in self._history}
        merged |= {key: tuple(times) for key, times in self._history.items()}
        if now is None:
            return merged
        since = now - self.window
        kept = {
            key: times if times[0] >= since else tuple(t for t in times if t >= since)
            for key, times in merged.items()
            if times
        }
        return {key: times for key, times in kept.items() if times}

    def repaired(self, host: str, container: str, now: float) -> bool:
        """Note one repair; True when this container is now crash-looping."""
        key = (host, container)
        times = self._history.get(key)
        if times is None:
            times = self._history[key] = deque(self._resumed.get(key, ()))
        times.append(now)
        while times and times[0] < now - self.window:
            times.popleft()
        return len(times) >= self.attempts
