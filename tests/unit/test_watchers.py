"""The controller's reaction to Docker events (reconciler/watchers.py): a pass at once, and a look
again 0.1 s and 1 s after the last event, since Docker lists a container's new state a moment after
it publishes the event."""

from __future__ import annotations

import threading
import time

from bench.scale import topology_text
from desired_state.load import load_topology
from reconciler.watchers import EVENT_RECHECK_DELAYS, EventWatchers

EVENT = {"Actor": {"Attributes": {"name": "consul"}}}


def test_each_event_asks_at_once_and_the_last_one_is_looked_at_again_twice() -> None:
    asked: list[tuple[float, str]] = []
    done = threading.Event()

    def request(reason: str) -> None:
        asked.append((time.monotonic(), reason))
        if sum(1 for _, r in asked if r.startswith("event-recheck")) == len(EVENT_RECHECK_DELAYS):
            done.set()

    watchers = EventWatchers(request)
    watchers.on_event("host3", "kill", EVENT)
    time.sleep(0.05)
    last = time.monotonic()  # the rechecks are timed from the moment the last event arrives
    watchers.on_event("host3", "die", EVENT)
    assert done.wait(10), asked
    time.sleep(0.3)  # nothing more comes: the first event's rechecks were cancelled by the second
    reasons = [r for _, r in asked]
    assert reasons == ["event:host3", "event:host3", "event-recheck:host3", "event-recheck:host3"], reasons
    rechecks = [t - last for t, r in asked if r.startswith("event-recheck")]
    assert all(at >= delay for at, delay in zip(rechecks, EVENT_RECHECK_DELAYS, strict=True)), rechecks


def test_a_reconnected_stream_asks_once_and_stop_cancels_what_is_pending() -> None:
    asked: list[str] = []
    watchers = EventWatchers(asked.append)
    watchers.on_event("host1", "reconnected", {})
    assert asked == ["engine-back:host1"]
    watchers.on_event("host1", "start", EVENT)
    watchers.stop()
    time.sleep(max(EVENT_RECHECK_DELAYS) + 0.3)
    assert asked == ["engine-back:host1", "event:host1"]


def test_each_host_keeps_its_own_rechecks() -> None:
    """A pass asked for by an event looks at that host alone (reconciler.scope): an event on another
    host must not cancel the first host's look again."""
    asked: list[str] = []
    watchers = EventWatchers(asked.append)
    try:
        watchers.on_event("host1", "die", EVENT)
        watchers.on_event("host2", "die", EVENT)
        deadline = time.monotonic() + 10
        while asked.count("event-recheck:host1") < 2 or asked.count("event-recheck:host2") < 2:
            assert time.monotonic() < deadline, asked
            time.sleep(0.05)
    finally:
        watchers.stop()
    rechecks = len(EVENT_RECHECK_DELAYS)
    assert asked.count("event-recheck:host1") == asked.count("event-recheck:host2") == rechecks


def test_hundreds_of_hosts_cost_one_thread_not_one_each() -> None:
    """unix:// and tcp:// hosts' streams are coroutines on the event hub's one thread (here engines
    that do not exist: each stream fails and backs off, as for an engine that is down)."""
    loaded = load_topology(topology_text(300), source="300 hosts")
    before = threading.active_count()
    watchers = EventWatchers(lambda reason: None)
    try:
        watchers.sync(loaded)
        time.sleep(0.5)  # every stream has tried and failed once
        assert threading.active_count() - before == 1
        assert watchers.threads == 1
    finally:
        watchers.stop()
