"""The generic reconcile loop (reconciler.loop): coalescing, guarded calls, stop and fail (no Docker)."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from reconciler.loop import ReconcileLoop, Requeue
from reconciler.triggers import PassRequests, Request


class Recorder:
    def __init__(self, fail: int = 0) -> None:
        self.calls: list[Request] = []
        self.fail = fail
        self.seen_running: list[bool] = []
        self.loop: ReconcileLoop[Request] | None = None
        self.follow_ups: list[Requeue] = []

    def __call__(self, request: Request, started: float) -> list[Requeue]:
        self.calls.append(request)
        if self.loop is not None:
            self.seen_running.append(self.loop.liveness().running_since == started)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("database is locked\nsecond line")
        return self.follow_ups


def make(reconcile: Recorder) -> tuple[ReconcileLoop[Request], CollectorRegistry]:
    registry = CollectorRegistry()
    loop: ReconcileLoop[Request] = ReconcileLoop(
        PassRequests(settle=0.0),
        reconcile,
        retry_delay=lambda failures: 100.0 * failures,
        triggers=Counter("t_triggers", "", ["source"], registry=registry),
        outcomes=Counter("t_passes", "", ["outcome"], registry=registry),
        log=logging.getLogger("consul_reconciler.controller"),
    )
    reconcile.loop = loop
    return loop, registry


def test_requests_are_counted_by_kind_and_coalesced_into_one_call() -> None:
    reconcile = Recorder()
    loop, registry = make(reconcile)
    for reason in ("event:h1", "event:h2", "interval"):
        loop.request(reason)
    thread = threading.Thread(target=loop.run, args=(lambda: None, lambda: None), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while loop.calls < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    loop.stop()
    thread.join(5)
    assert len(reconcile.calls) == 1 and reconcile.calls[0].label() == "event,interval"
    assert reconcile.seen_running == [True]
    assert registry.get_sample_value("t_triggers_total", {"source": "event"}) == 2
    assert loop.liveness().running_since is None and loop.last_end is not None


def test_a_failed_call_is_reported_retried_later_and_cleared_by_the_next_that_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reconcile = Recorder(fail=2)
    loop, registry = make(reconcile)
    retries: list[tuple[str, float]] = []
    loop.request_in = lambda reason, seconds: retries.append((reason, seconds))  # type: ignore[method-assign]
    request = Request({"startup": time.monotonic()})
    with caplog.at_level(logging.INFO, logger="consul_reconciler.controller"):
        loop.guarded(request)
        loop.guarded(request)
        assert (loop.errors, loop.error) == (2, "RuntimeError: database is locked")
        assert retries == [("pass-retry", 100.0), ("pass-retry", 200.0)]
        assert registry.get_sample_value("t_passes_total", {"outcome": "error"}) == 2
        loop.guarded(request)
    assert (loop.errors, loop.error, loop.calls) == (0, None, 3)
    assert "pass failed, nothing more is done until it can be recorded" in caplog.text
    assert "passes work again after 2 failed attempt(s)" in caplog.text


@pytest.mark.parametrize(("fatal", "code"), [(None, 0), ("the session TTL is refused", 1)])
def test_stop_and_fail_end_run_with_its_exit_code(fatal: str | None, code: int) -> None:
    loop, _ = make(Recorder())
    steps: list[str] = []

    def start() -> None:
        steps.append("start")
        threading.Timer(0.1, loop.stop if fatal is None else lambda: loop.fail(fatal)).start()

    codes: list[int] = []  # run beside the main thread: no signal handlers in the test process
    thread = threading.Thread(target=lambda: codes.append(loop.run(start, lambda: steps.append("finish"))))
    thread.start()
    thread.join(10)
    assert codes == [code]
    assert steps == ["start", "finish"] and loop.stopping and loop.fatal == fatal


@pytest.mark.parametrize("stopping", [False, True])
def test_a_calls_follow_ups_are_asked_for_after_it_unless_the_loop_stops(stopping: bool) -> None:
    reconcile = Recorder()
    reconcile.follow_ups = [Requeue("rollout-wait", 2.0), Requeue("source-retry", 1.0)]
    loop, _ = make(reconcile)
    asked: list[tuple[str, float, bool]] = []
    loop.request_in = lambda reason, seconds: asked.append(  # type: ignore[method-assign]
        (reason, seconds, loop.liveness().running_since is None)
    )
    if stopping:
        loop.stop()
    loop.guarded(Request({"interval": time.monotonic()}))
    assert len(reconcile.calls) == 1
    # asked once the call has ended (not while it runs), in the order the call gave them
    assert asked == ([] if stopping else [("rollout-wait", 2.0, True), ("source-retry", 1.0, True)])
