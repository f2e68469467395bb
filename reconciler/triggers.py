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

import docker
import docker.errors

from desired_state.spec import Endpoint
from reconciler import labels as L
from reconciler.engines import connect, describe_error

log = logging.getLogger("consul_reconciler.triggers")

WATCHED_EVENTS = ("die", "stop", "kill", "destroy", "oom", "pause")


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

    @property
    def closed(self) -> bool:
        return self._closed

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

    Reconnects with capped exponential backoff when the engine goes away; asks for a
    pass when it reconnects (what happened while it was away is unknown)."""

    def __init__(
        self,
        host: str,
        endpoint: Endpoint,
        cluster: str,
        on_event: Callable[[str, str, Mapping[str, Any]], None],
        max_delay: float = 30.0,
    ) -> None:
        super().__init__(name=f"events-{host}", daemon=True)
        self.host = host
        self.endpoint = endpoint
        self._cluster = cluster
        self._on_event = on_event
        self._max_delay = max_delay
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._stream: Any = None
        self._client: docker.DockerClient | None = None
        self.connected = threading.Event()

    def run(self) -> None:
        delay = 0.5
        first = True
        while not self._halt.is_set():
            try:
                self._listen(first)
                delay = 0.5
            except Exception as exc:  # any failure of the stream: reconnect with backoff
                if self._halt.is_set():
                    break
                self.connected.clear()
                log.debug("event stream of %s lost: %s", self.host, describe_error(exc))
            finally:
                self._close_stream()
            first = False
            if self._halt.wait(delay):
                break
            delay = min(self._max_delay, delay * 2)

    def _listen(self, first: bool) -> None:
        # No read timeout: the stream is idle for as long as nothing happens.
        client = connect(self.host, Endpoint(**{**self.endpoint.to_dict(), "timeout": 10.0}))
        client.api.timeout = None
        filters = {
            "type": ["container"],
            "label": [f"{L.MANAGED_BY}={self._cluster}"],
            "event": list(WATCHED_EVENTS),
        }
        stream = client.api.events(decode=True, filters=filters)
        with self._lock:
            self._client, self._stream = client, stream
        if self._halt.is_set():
            return
        self.connected.set()
        if not first:
            self._on_event(self.host, "reconnected", {})
        for event in stream:
            if self._halt.is_set():
                return
            self._on_event(self.host, str(event.get("Action") or event.get("status")), event)
        raise ConnectionError("event stream ended")

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
