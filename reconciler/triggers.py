"""What asks for a pass: the interval, the desired-state file, Docker events.

Triggers only say "look now"; the pass then acts on what it observes (level-triggered).
A burst of requests becomes one pass.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desired_state.spec import Endpoint
from reconciler import labels as L
from reconciler.backoff import Reconnect
from reconciler.docker_import import CancellableStream, docker
from reconciler.engines import connect_bounded, describe_error
from reconciler.eventhub import WATCHED_EVENTS

log = logging.getLogger("consul_reconciler.triggers")


@dataclass(frozen=True)
class Request:
    reasons: dict[str, float]  # reason -> monotonic time of the first request for it

    @property
    def first(self) -> float:
        return min(self.reasons.values())

    def label(self) -> str:
        return ",".join(sorted({r.split(":", 1)[0] for r in self.reasons}))


class PassRequests:
    """A coalescing mailbox: any number of requests, one pass."""

    def __init__(self, settle: float = 0.02) -> None:
        self._cond = threading.Condition()
        self._reasons: dict[str, float] = {}
        self._closed = False
        self._settle = settle

    def request(self, reason: str) -> None:
        with self._cond:
            self._reasons.setdefault(reason, time.monotonic())
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait(self, timeout: float) -> Request | None:
        """Block until a request arrives (or ``timeout``); returns all pending reasons at once."""
        with self._cond:
            if not self._reasons and not self._closed:
                self._cond.wait(timeout)
            if self._closed or not self._reasons:
                return None
        time.sleep(self._settle)  # let the rest of a burst arrive
        with self._cond:
            reasons, self._reasons = self._reasons, {}
        return Request(reasons)


class FileWatcher(threading.Thread):
    """Polls the desired-state file (size, mtime, inode) and asks for a pass when it changes."""

    def __init__(self, path: Path, on_change: Callable[[], None], interval: float = 0.1) -> None:
        super().__init__(name="file-watcher", daemon=True)
        self._path = path
        self._on_change = on_change
        self._interval = interval
        self._halt = threading.Event()
        self._last = self._signature()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def run(self) -> None:
        while not self._halt.wait(self._interval):
            current = self._signature()
            if current != self._last:
                self._last = current
                log.info("desired state %s changed", self._path)
                self._on_change()

    def stop(self) -> None:
        self._halt.set()


class EventWatcher(threading.Thread):
    """One Docker event stream for one host, filtered to our cluster's containers.

    The stream is asked for a window at a time (``until`` = now + ``window``), then again from where
    the last one ended (``since``), so no event is missed between windows and a half-open connection
    (an engine that went away without closing it) is noticed: a healthy engine ends each window
    itself, and a stream silent for longer than the window plus ``grace`` is taken as lost. A lost
    stream is reconnected with capped exponential backoff, from the base delay again once a stream
    worked, and a reconnection asks for a pass (what happened while away is unknown)."""

    def __init__(
        self,
        host: str,
        endpoint: Endpoint,
        cluster: str,
        on_event: Callable[[str, str, Mapping[str, Any]], None],
        max_delay: float = 30.0,
        window: float = 60.0,
        grace: float = 15.0,
    ) -> None:
        super().__init__(name=f"events-{host}", daemon=True)
        self.host = host
        self.endpoint = endpoint
        self._cluster = cluster
        self._on_event = on_event
        self._backoff = Reconnect(first=0.5, cap=max_delay)
        self._window = window
        self._grace = grace
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._stream: Any = None
        self._client: docker.DockerClient | None = None
        self._since: float | None = None  # engine time the next window starts from
        self.connected = threading.Event()
        self.windows = 0  # windows that ended as asked (a healthy stream)

    @property
    def delay(self) -> float:
        """The wait before the next reconnection attempt, should the stream fail now."""
        return self._backoff.upcoming

    def run(self) -> None:
        lost = False  # a stream was lost since the last one that worked: the next one asks for a pass
        while not self._halt.is_set():
            try:
                began = time.monotonic()
                self._listen(lost)
                self.windows += 1
                lost = False
                self._backoff.reset()
                if time.monotonic() - began < self._window / 2 and not self._halt.is_set():
                    # ended far sooner than asked: the engine's clock is ahead of ours. Never a hot
                    # loop; the next window starts from the engine's "now" (since=None).
                    self._since = None
                    self._halt.wait(self._window / 2)
                continue  # the window ended as asked: the next one at once, from where it stopped
            except Exception as exc:  # any failure of the stream: reconnect with backoff
                if self._halt.is_set():
                    break
                if self.connected.is_set():
                    self._backoff.reset()  # this stream had worked: start the backoff over
                self.connected.clear()
                lost = True
                log.debug("event stream of %s lost: %s", self.host, describe_error(exc))
            finally:
                self._close_stream()
            if self._halt.wait(self._backoff.next_delay()):
                break

    def _listen(self, after_loss: bool) -> None:
        client = connect_bounded(self.host, Endpoint(**{**self.endpoint.to_dict(), "timeout": 10.0}))
        filters = {
            "type": ["container"],
            "label": [f"{L.MANAGED_BY}={self._cluster}"],
            "event": list(WATCHED_EVENTS),
        }
        now = time.time()
        since = self._since if self._since is not None else now
        self._since = since  # a stream lost in this window is asked for again from its start
        until = now + self._window
        # docker-py's events() reads without a timeout; the same request with one: silent for longer
        # than the window plus the grace, the connection is gone.
        api = client.api
        response = api._get(
            api._url("/events"),
            params={"since": since, "until": until, "filters": docker.utils.convert_filters(filters)},
            stream=True,
            timeout=self._window + self._grace,
        )
        api._raise_for_status(response)
        stream = CancellableStream(api._stream_helper(response, decode=True), response)
        with self._lock:
            self._client, self._stream = client, stream
        if self._halt.is_set():
            return
        self.connected.set()
        if after_loss:
            self._on_event(self.host, "reconnected", {})
        for event in stream:
            if self._halt.is_set():
                return
            self._on_event(self.host, str(event.get("Action") or event.get("status")), event)
        self._since = until  # the engine ended the window: the next one starts where it stopped

    def _close_stream(self) -> None:
        with self._lock:
            stream, client = self._stream, self._client
            self._stream = self._client = None
        for closer in (stream, client):
            if closer is not None:
                with contextlib.suppress(Exception):  # closing a dead connection may fail
                    closer.close()

    def stop(self) -> None:
        self._halt.set()
        self._close_stream()
