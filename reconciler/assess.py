"""What follows a pass, as a value: which hosts enter or leave backoff, crash-loop verdicts, when to look
again (decisions as outputs; the controller applies them: state, audit notes, requests).

:func:`assess` is pure: the clock (``now``), the history (backoff and crash-loop state) and the random
source of the backoff jitter are given, and nothing given is changed; with a seeded ``rng`` (or no
jitter) the same inputs give the same assessment.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reconciler.backoff import BackoffPolicy, BackoffTable, CrashLoopDetector, HostBackoff
from reconciler.loop import Requeue
from reconciler.plan import Kind

if TYPE_CHECKING:
    from reconciler.one_pass import PassResult

REPAIR_KINDS = (Kind.CREATE, Kind.START)  # a container that needed these again and again crash-loops

WAITING_RECHECK = 2.0  # seconds between looks while a server rollout waits for the cluster
RETRY_MARGIN = 0.01  # seconds after a backoff window ends that its pass is asked for


@dataclass(frozen=True)
class Rules:
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    crashloop_attempts: int = 3
    crashloop_window: float = 300.0


@dataclass(frozen=True)
class History:
    """Per-host backoff state, and the repairs the crash-loop detection counts (never changed in place:
    each assessment returns a new one)."""

    hosts: Mapping[str, HostBackoff] = field(default_factory=dict)
    repairs: Mapping[tuple[str, str], tuple[float, ...]] = field(default_factory=dict)

    def waiting(self, now: float) -> dict[str, HostBackoff]:
        """Hosts still inside their backoff window."""
        return {h: s for h, s in self.hosts.items() if s.failures and s.retry_at > now}

    def deferred(self, now: float) -> dict[str, str]:
        """Why each host inside its backoff window is left alone by a pass starting ``now``."""
        return {
            host: f"backing off after {s.failures} failure(s); next try in {s.retry_at - now:.1f}s"
            + (" (degraded: crash loop)" if s.degraded else "")
            for host, s in self.waiting(now).items()
        }


@dataclass(frozen=True)
class PassSummary:
    failed: Mapping[str, str]  # host -> its first error of the pass (failed actions, then unreachable)
    repaired: Mapping[str, Sequence[str]]  # host -> the containers it created or started, in order
    observed: frozenset[str]  # hosts the pass observed
    desired: frozenset[str]  # hosts of the desired state
    waiting: bool = False  # a server change waits for the cluster
    unreachable: frozenset[str] = frozenset()  # hosts whose engine could not be reached


def summarize(result: PassResult, desired: Iterable[str]) -> PassSummary:
    """What :func:`assess` needs of a pass (``desired``: the hosts of the desired state)."""
    failed: dict[str, str] = {}
    repaired: dict[str, list[str]] = {}
    for r in result.applied.results if result.applied else []:
        if r.status == "failed":
            failed.setdefault(r.action.host, r.error or "action failed")
        elif r.status == "succeeded" and r.action.kind in REPAIR_KINDS:
            repaired.setdefault(r.action.host, []).append(r.action.name)
    for host, error in result.plan.unreachable.items():
        failed.setdefault(host, error)
    observed = frozenset(h.name for h in result.observed.hosts)
    return PassSummary(
        failed,
        repaired,
        observed,
        frozenset(desired),
        waiting=result.status == "waiting",
        unreachable=frozenset(result.plan.unreachable),
    )


@dataclass(frozen=True)
class Note:
    """A verdict to audit with the pass (as a skipped action)."""

    host: str
    kind: str  # "degraded" (a crash loop) or "backoff"
    message: str


@dataclass(frozen=True)
class Assessment:
    history: History  # the new state, to replace the one given
    notes: tuple[Note, ...]  # in the order to audit them
    entered: frozenset[str]  # hosts that failed: into backoff, or further into it
    degraded: frozenset[str]  # hosts found crash-looping now (among ``entered``)
    cleared: frozenset[str]  # hosts a clean pass took out of backoff (or left out of it)
    waiting: Mapping[str, HostBackoff]  # hosts inside their backoff window at ``now``
    retry_in: float | None  # ask for a pass this many seconds from now: the first window among the
    #   desired hosts ends then (at once when it ended already: the pass deferred that host)
    recheck_in: float | None  # ask for a pass this many seconds from now: a rollout waits

    def requeues(self) -> list[Requeue]:
        """The passes to ask for: at the end of the first backoff window among the desired hosts (at
        once when it ended while this pass ran: the pass deferred that host, and no other trigger may
        come), and soon when a server change waits for the cluster (not only at the next resync)."""
        found = [] if self.retry_in is None else [Requeue("backoff-retry", self.retry_in)]
        return found + ([] if self.recheck_in is None else [Requeue("rollout-wait", self.recheck_in)])


def assess(
    summary: PassSummary, now: float, history: History, rules: Rules, rng: random.Random
) -> Assessment:
    table = BackoffTable(rules.backoff, rng, dict(history.hosts))  # its entries are replaced, not changed
    crashloops = CrashLoopDetector.resumed(rules.crashloop_attempts, rules.crashloop_window, history.repairs)
    notes: list[Note] = []
    looping_hosts: set[str] = set()
    for host, names in summary.repaired.items():
        looping = [n for n in names if crashloops.repaired(host, n, now)]
        if looping:
            looping_hosts.add(host)
            why = (
                f"crash loop: {', '.join(looping)} needed repair {crashloops.attempts} times "
                f"within {crashloops.window:.0f}s"
            )
            delay = table.failed(host, now, why, degraded=True)
            notes.append(Note(host, "degraded", f"{why}; host degraded, next try in {delay:.1f}s"))
    for host, error in summary.failed.items():
        if host in looping_hosts:
            continue
        delay = table.failed(host, now, error, unreachable=host in summary.unreachable)
        failures = table.get(host).failures
        notes.append(Note(host, "backoff", f"failure {failures}: next try in {delay:.1f}s"))
    cleared = summary.observed - set(summary.failed) - looping_hosts
    for host in cleared:
        table.succeeded(host)  # a clean pass: backoff and degraded state reset
    next_retry = table.next_retry(summary.desired)
    return Assessment(
        history=History(table.hosts, crashloops.history(now)),
        notes=tuple(notes),
        entered=frozenset(summary.failed) | frozenset(looping_hosts),
        degraded=frozenset(looping_hosts),
        cleared=frozenset(cleared),
        waiting=table.waiting(now),
        retry_in=None if next_retry is None else max(0.0, next_retry - now) + RETRY_MARGIN,
        recheck_in=WAITING_RECHECK if summary.waiting else None,
    )
