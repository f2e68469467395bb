"""Backoff, crash-loop detection and the coalescing pass mailbox (pure, clock given)."""

from __future__ import annotations

import random
import threading
import time

from reconciler.backoff import BackoffPolicy, BackoffTable, CrashLoopDetector, Reconnect
from reconciler.triggers import PassRequests


def test_backoff_grows_exponentially_is_capped_and_jittered() -> None:
    policy = BackoffPolicy(base=1.0, factor=2.0, cap=10.0, jitter=0.2)
    rng = random.Random(7)
    delays = [policy.delay(n, rng) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        nominal = min(10.0, 2.0 ** (n - 1))
        assert nominal * 0.8 <= delay <= nominal * 1.2
    assert max(delays) <= 12.0
    assert len({round(policy.delay(3, rng), 6) for _ in range(20)}) > 1  # jitter spreads retries


def test_backoff_table_waits_then_resets_on_success() -> None:
    table = BackoffTable(BackoffPolicy(base=2.0, jitter=0.0))
    assert table.failed("h1", now=100.0, error="down") == 2.0
    assert table.failed("h1", now=101.0, error="down") == 4.0
    assert set(table.waiting(now=102.0)) == {"h1"}
    assert table.next_retry({"h1"}) == 105.0
    assert table.waiting(now=105.5) == {}
    table.succeeded("h1")
    assert table.get("h1").failures == 0 and not table.get("h1").degraded
    assert table.next_retry({"h1"}) is None


def test_a_window_that_ends_while_the_pass_that_deferred_the_host_runs_still_gets_its_retry() -> None:
    # Seen in a suite run: a pass starting at 26.577 left host1 alone (its window ended at 26.58) and
    # finished at 26.583; asked only for windows still open, it scheduled nothing, and host1 waited
    # for the resync interval (ten minutes) with its engine back.
    table = BackoffTable(BackoffPolicy(base=1.0, jitter=0.0))
    table.failed("host1", now=25.58, error="engine unreachable")  # window ends at 26.58
    pass_start, pass_end = 26.577, 26.583
    assert set(table.waiting(pass_start)) == {"host1"}  # deferred by this pass
    retry = table.next_retry({"host1", "host2"})
    assert retry == 26.58 and retry < pass_end  # due already when the pass ends: asked for at once
    assert table.next_retry({"host2"}) is None  # a host no longer desired asks for nothing


def test_reconnect_doubles_from_the_first_wait_up_to_the_cap() -> None:
    # the event watcher's and the KV watch's numbers: 0.5 s, doubled, at most 30 s
    backoff = Reconnect(first=0.5, cap=30.0)
    assert backoff.upcoming == 0.5
    assert [backoff.next_delay() for _ in range(9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff.upcoming == 30.0


def test_reconnect_starts_over_after_a_success() -> None:
    backoff = Reconnect(first=0.5, cap=30.0)
    for _ in range(4):
        backoff.next_delay()
    backoff.reset()
    assert backoff.upcoming == 0.5
    assert [backoff.next_delay() for _ in range(3)] == [0.5, 1.0, 2.0]


def test_reconnect_with_a_cap_below_the_first_wait_waits_the_first_once() -> None:
    # the leader lock caps its waits at a quarter of the TTL: with a 1 s TTL, 0.5 s once, then 0.25 s
    backoff = Reconnect(first=0.5, cap=0.25)
    assert [backoff.next_delay() for _ in range(3)] == [0.5, 0.25, 0.25]
    other = Reconnect(first=1.0, cap=10.0, factor=3.0)
    assert [other.next_delay() for _ in range(4)] == [1.0, 3.0, 9.0, 10.0]


def test_reconnect_jitter_spreads_each_wait_around_the_same_growth() -> None:
    # the KV watch: each wait within 20% of 0.5, 1, 2, ... 30 s
    backoff = Reconnect(first=0.5, cap=30.0, jitter=0.2, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(10)]
    for delay, nominal in zip(delays, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0], strict=True):
        assert nominal * 0.8 <= delay <= nominal * 1.2
    assert len({round(d, 6) for d in delays[6:]}) > 1  # the capped waits are spread too
    backoff.reset()
    assert 0.4 <= backoff.next_delay() <= 0.6


def test_crash_loop_needs_attempts_within_the_window() -> None:
    detector = CrashLoopDetector(attempts=3, window=60.0)
    assert not detector.repaired("h", "registrator", 0.0)
    assert not detector.repaired("h", "registrator", 10.0)
    assert not detector.repaired("h", "consul", 11.0)  # another container counts apart
    assert detector.repaired("h", "registrator", 20.0)
    slow = CrashLoopDetector(attempts=3, window=60.0)
    assert not any(slow.repaired("h", "c", t) for t in (0.0, 50.0, 120.0, 190.0))  # spread out: fine


def test_pass_requests_coalesce_a_burst_into_one() -> None:
    requests = PassRequests(settle=0.05)
    for i in range(50):
        requests.request(f"event:h{i % 3}")
    got = requests.wait(timeout=1.0)
    assert got is not None and set(got.reasons) == {"event:h0", "event:h1", "event:h2"}
    assert got.label() == "event"
    assert requests.wait(timeout=0.05) is None  # nothing left


def test_pass_requests_wake_a_waiter_and_close() -> None:
    requests = PassRequests(settle=0.0)
    threading.Timer(0.1, requests.request, args=["file"]).start()
    started = time.monotonic()
    got = requests.wait(timeout=5.0)
    assert got is not None and got.label() == "file"
    assert time.monotonic() - started < 2.0
    requests.close()
    requests.request("interval")
    assert requests.wait(timeout=0.1) is None
