"""The generic reconcile loop: requests in, one reconcile call at a time out (after controller-runtime).

It knows nothing of what is reconciled:

- Requests go to a coalescing mailbox (any number of requests, one call); a request may be asked for
  now, once after a delay (a later ask for the same reason replaces it), or at an interval.
- A call returns its follow-ups (:class:`Requeue`, controller-runtime's ``Result{RequeueAfter}``):
  the loop asks for them once the call has ended, unless it is stopping.
- The thread that calls :meth:`ReconcileLoop.run` makes the calls, so two never overlap.
- A call that raises is retried after a delay that grows with the failures in a row (the caller's rate
  limit); the failure is counted, logged and kept for the status document until a call works again.
- SIGTERM/SIGINT (on the main thread) or :meth:`stop`: the call in flight finishes, no new one starts.
- Liveness for probes: when the running call started, what it last said it was doing, when the last
  call ended.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Generic, Protocol, TypeVar

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import Counter


class Request(Protocol):
    def label(self) -> str: ...


R = TypeVar("R", bound=Request)
R_co = TypeVar("R_co", bound=Request, covariant=True)


class Mailbox(Protocol[R_co]):
    """Coalescing requests (reconciler.triggers.PassRequests)."""

    def request(self, reason: str) -> None: ...

    def close(self) -> None: ...

    def wait(self, timeout: float) -> R_co | None: ...


@dataclass(frozen=True)
class Requeue:
    """A follow-up a call returns: ask for another call for ``reason`` ``after`` seconds from its end
    (a later follow-up for the same reason replaces an earlier one)."""

    reason: str
    after: float


@dataclass(frozen=True)
class Liveness:
    started: float  # monotonic time the loop was made
    running_since: float | None  # the call in flight started then (None: none is)
    last_end: float | None  # the last call ended then (None: none has)
    progress_at: float  # the call in flight last moved on (or said it waits) then
    doing: str  # what it said


class ReconcileLoop(Generic[R]):
    def __init__(
        self,
        mailbox: Mailbox[R],
        reconcile: Callable[[R, float], Sequence[Requeue]],
        *,
        retry_delay: Callable[[int], float],
        triggers: Counter,
        outcomes: Counter,
        log: logging.Logger,
    ) -> None:
        """``reconcile(request, started)`` is called for each coalesced request (``started``: the
        monotonic time the call began) and returns its follow-ups; ``retry_delay(n)`` is the wait
        after ``n`` failed calls in a row; ``triggers`` counts requests by the part of their reason
        before any ':', ``outcomes`` counts failed calls as "error"."""
        self.mailbox = mailbox
        self._reconcile = reconcile
        self._retry_delay = retry_delay
        self._triggers = triggers
        self._outcomes = outcomes
        self._log = log
        self._stopping = threading.Event()
        self._scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}, timezone=UTC
        )
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._running_since: float | None = None
        self._last_end: float | None = None
        self._progress_at = time.monotonic()
        self._doing = "starting"
        self.calls = 0  # reconcile calls made (ended, well or not)
        self.errors = 0  # calls that failed in a row
        self.error: str | None = None  # why the last call failed, while calls fail
        self.fatal: str | None = None  # why the loop stopped on its own (exit code 1)

    # --- requests ----------------------------------------------------------------------------------

    def request(self, reason: str) -> None:
        self._triggers.labels(reason.split(":", 1)[0]).inc()
        self.mailbox.request(reason)

    def request_in(self, reason: str, seconds: float) -> None:
        """Ask for a call once, ``seconds`` from now (a later call for the same reason replaces it)."""
        when = datetime.now(UTC) + timedelta(seconds=seconds)
        self._scheduler.add_job(
            self.request, "date", args=[reason], run_date=when, id=reason, replace_existing=True
        )

    def request_every(self, reason: str, seconds: float, jitter: float, job_id: str) -> None:
        """Ask for a call every ``seconds`` (+- ``jitter`` seconds), from :meth:`start_scheduler` on; the
        same ``job_id`` again replaces the period (the next call comes ``seconds`` from now)."""
        self._scheduler.add_job(
            self.request,
            "interval",
            args=[reason],
            seconds=seconds,
            jitter=jitter,
            id=job_id,
            replace_existing=True,
        )

    def call_every(self, func: Callable[[], None], seconds: float, job_id: str) -> None:
        """Call ``func`` (on the scheduler's thread) at once, then every ``seconds``."""
        self._scheduler.add_job(func, "interval", seconds=seconds, id=job_id, next_run_time=datetime.now(UTC))

    def start_scheduler(self) -> None:
        self._scheduler.start()

    def close(self) -> None:
        """Stop the scheduler: no more timed or periodic requests."""
        self._scheduler.shutdown(wait=False)

    # --- lifecycle ---------------------------------------------------------------------------------

    def run(self, start: Callable[[], None], finish: Callable[[], None]) -> int:
        """``start()``, then calls until SIGTERM/SIGINT (or :meth:`stop`), then ``finish()``; returns the
        exit code (1 after :meth:`fail`)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        start()
        try:
            while not self._stopping.is_set():
                request = self.mailbox.wait(timeout=1.0)
                if request is not None and not self._stopping.is_set():
                    self.guarded(request)
        finally:
            finish()
        if self.fatal is not None:
            self._log.error("controller stopped: %s", self.fatal)
            return 1
        self._log.info("controller stopped")
        return 0

    def stop(self) -> None:
        if not self._stopping.is_set():
            self._log.info("stopping: finishing the action in flight, starting no new one")
        self._stopping.set()
        self.mailbox.close()

    def fail(self, why: str) -> None:
        """Something no retry can fix: stop, and :meth:`run` returns 1."""
        self.fatal = why
        self.stop()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._log.info("received %s", signal.Signals(signum).name)
        self.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # --- one call ----------------------------------------------------------------------------------

    def guarded(self, request: R) -> None:
        """One call. A call that fails as a whole (the audit database unavailable or read-only, say)
        pauses the loop: it is reported, and retried with backoff."""
        try:
            self._timed(request)
        except Exception as exc:
            self.errors += 1
            delay = self._retry_delay(self.errors)
            self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            self._outcomes.labels("error").inc()
            self._log.error(
                "pass failed, nothing more is done until it can be recorded: %s; retrying in %.1fs",
                self.error,
                delay,
            )
            self.request_in("pass-retry", delay)
        else:
            if self.errors:
                self._log.info("passes work again after %d failed attempt(s)", self.errors)
            self.errors = 0
            self.error = None

    def _timed(self, request: R) -> None:
        started = time.monotonic()
        with self._lock:
            self._running_since = started
            self._progress_at, self._doing = started, f"a pass ({request.label()})"
        try:
            requeues = self._reconcile(request, started)
        finally:
            with self._lock:
                self._running_since = None
                self._last_end = time.monotonic()
            self.calls += 1
        if not self.stopping:
            for requeue in requeues:
                self.request_in(requeue.reason, requeue.after)

    def progress(self, what: str) -> None:
        """The call in flight moved on, or is waiting on purpose (a wait is not a wedge)."""
        with self._lock:
            self._progress_at, self._doing = time.monotonic(), what

    def liveness(self) -> Liveness:
        with self._lock:
            return Liveness(
                self._started, self._running_since, self._last_end, self._progress_at, self._doing
            )

    @property
    def last_end(self) -> float | None:
        return self._last_end
