"""Which hosts a pass looks at (pure).

At thousands of hosts a pass that lists every engine because one container died on one of them does
a thousand times the work it needs, and a resync that lists them all at once is a burst. So:

- a pass asked for by a host's Docker event (``event:HOST``, ``event-recheck:HOST``,
  ``engine-back:HOST``) observes and plans that host, plus the *anchors*: every host that carries a
  Consul server, desired or last seen running one. The cluster-wide judgements (quorum, the dangerous
  changes, the server rollout's gates) then see every server as they do in a full pass;
- the periodic resync is spread: the hosts are cut into ``slices`` (about :data:`SLICE_HOSTS` each, by a
  stable hash of the name), and each tick of the resync timer (every ``interval / slices``) looks at the
  next slice (plus the anchors), so every host is still looked at once per interval;
- everything else is a full pass: start-up, a new document, leadership, a retry, a backoff's end, a
  rollout's wait, a resume; and so is every pass while the document in force has not had a full pass
  that was not refused (a scoped pass must never do what a full one refused: a removal cap that a
  document exceeds as a whole is not to be met slice by slice).

A scoped pass leaves the other hosts as they are: not observed, not planned, their state and drift as
the last pass that looked at them left them (as for a host backing off)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass

HOST_REASONS = frozenset({"event", "event-recheck", "engine-back"})
RESYNC = "interval"  # the resync timer's reason
# About this many hosts per resync slice. A slice pass pays a part that does not depend on its size
# (reading the known hosts, the scope, the assessment and the status of the whole fleet: about 80 ms at
# 1,000 hosts), so the fewer the slices the less idle CPU; and each slice is a burst of list calls, so
# the larger the slice the longer an event's pass may queue behind it. 250 hosts keep a slice pass
# near a quarter of a second (bench/simscale.py, 1,000 hosts: 200 to 480 ms): 4 slices an interval at
# 1,000 hosts, 12 at 3,000. With 100, the idle controller of 1,000 hosts used 3.4 CPU s a minute;
# with 250, 2.7.
SLICE_HOSTS = 250


@dataclass(frozen=True)
class Scope:
    hosts: frozenset[str] | None = None  # None: every host (a full pass)
    why: str = "full"

    @property
    def full(self) -> bool:
        return self.hosts is None

    def covers(self, host: str) -> bool:
        return self.hosts is None or host in self.hosts


FULL = Scope()


def slice_count(hosts: int) -> int:
    """How many slices the resync of ``hosts`` hosts is spread over (1: each tick looks at all)."""
    return max(1, math.ceil(hosts / SLICE_HOSTS))


def in_slice(host: str, index: int, count: int) -> bool:
    """Is ``host`` in slice ``index`` of ``count``? (stable across passes and processes)"""
    return zlib.crc32(host.encode()) % count == index


def pass_scope(
    reasons: Iterable[str],
    *,
    hosts: Collection[str],
    anchors: Collection[str],
    resync_slice: tuple[int, int],
    scoped_allowed: bool,
) -> Scope:
    """The hosts a pass asked for by ``reasons`` looks at. ``hosts``: every host a full pass would
    observe; ``anchors``: the hosts carrying a server; ``resync_slice``: (index, count) of the slice
    a resync tick looks at; ``scoped_allowed``: the document in force had a full pass not refused."""
    if not scoped_allowed:
        return FULL
    index, count = resync_slice
    chosen: set[str] = set()
    kinds: set[str] = set()
    for reason in reasons:
        kind, _, host = reason.partition(":")
        if kind in HOST_REASONS and host:
            chosen.add(host)
        elif kind == RESYNC and count > 1:
            chosen.update(h for h in hosts if in_slice(h, index, count))
        else:
            return FULL
        kinds.add(kind if kind != RESYNC else f"resync slice {index + 1}/{count}")
    chosen.update(anchors)
    if chosen >= set(hosts):
        return FULL
    return Scope(frozenset(chosen), ", ".join(sorted(kinds)))
