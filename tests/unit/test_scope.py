"""Which hosts a pass looks at (reconciler.scope) and how many hosts are observed at once
(reconciler.observe.Concurrency): pure."""

from __future__ import annotations

from reconciler.observe import Concurrency
from reconciler.scope import SLICE_HOSTS, in_slice, pass_scope, slice_count

HOSTS = [f"host{i:04d}" for i in range(1, 1001)]
SERVERS = {"host0001", "host0002", "host0003"}


def scope(
    reasons: list[str], *, allowed: bool = True, index: int = 0, count: int = 10
) -> frozenset[str] | None:
    return pass_scope(
        reasons, hosts=HOSTS, anchors=SERVERS, resync_slice=(index, count), scoped_allowed=allowed
    ).hosts


def test_an_event_looks_at_its_host_and_the_servers_hosts() -> None:
    assert scope(["event:host0500", "event-recheck:host0501", "engine-back:host0502"]) == frozenset(
        {"host0500", "host0501", "host0502"} | SERVERS
    )


def test_anything_else_is_a_full_pass() -> None:
    for reason in (
        "startup",
        "file",
        "kv",
        "leader",
        "backoff-retry",
        "rollout-wait",
        "resume",
        "pass-retry",
    ):
        assert scope(["event:host0500", reason]) is None, reason


def test_no_scoped_pass_before_a_full_pass_of_the_document_was_not_refused() -> None:
    assert scope(["event:host0500"], allowed=False) is None


def test_the_resync_slices_cover_every_host_once_per_interval() -> None:
    count = slice_count(len(HOSTS))
    assert count == -(-len(HOSTS) // SLICE_HOSTS) > 1
    looked: list[str] = []
    for index in range(count):
        hosts = scope(["interval"], index=index, count=count)
        assert hosts is not None and hosts >= SERVERS
        looked += sorted(hosts - SERVERS)
    assert sorted(looked) == sorted(set(HOSTS) - SERVERS)  # each once
    sizes = [sum(1 for h in HOSTS if in_slice(h, i, count)) for i in range(count)]
    assert max(sizes) < 2 * SLICE_HOSTS and min(sizes) > SLICE_HOSTS // 2, sizes


def test_a_small_fleet_resyncs_whole() -> None:
    assert slice_count(30) == 1
    assert slice_count(SLICE_HOSTS) == 1 and slice_count(SLICE_HOSTS + 1) == 2
    assert scope(["interval"], count=1) is None


def test_the_observe_limit_grows_while_listings_stay_fast_and_shrinks_when_they_queue() -> None:
    c = Concurrency(start=16, floor=4, ceiling=64)
    for _ in range(10):
        c.after([0.002] * 50)
    assert c.limit == 64
    c.after([0.020] * 50)  # ten times the unloaded latency: queueing
    assert c.limit < 64
    for _ in range(10):
        c.after([0.050] * 50)
    assert c.limit == 4
    c.after([])  # a pass where nothing answered says nothing of the load
    assert c.limit == 4
