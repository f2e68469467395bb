"""The Docker event streams the controller follows, one per desired host, each event a request for a
pass of that host: unix:// and tcp:// hosts on one event loop (reconciler.eventhub), ssh:// hosts on a
thread each (reconciler.triggers.EventWatcher: docker-py opens an SSH session per client)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any

from desired_state.load import Loaded
from desired_state.spec import Endpoint
from reconciler.eventhub import EventHub, HubStream, served
from reconciler.triggers import EventWatcher

# the controller's logger: operators filter on it
log = logging.getLogger("consul_reconciler.controller")

# Seconds after the last event at which the controller looks once more (see on_event)
EVENT_RECHECK_DELAYS = (0.1, 1.0)

Stream = HubStream | EventWatcher


class EventWatchers:
    def __init__(self, request: Callable[[str], None]) -> None:
        self._request = request
        self._streams: dict[str, Stream] = {}
        self._hub = EventHub()
        self._lock = threading.Lock()
        self._rechecks: dict[str, list[Callable[[], None]]] = {}  # host -> what cancels its rechecks
        self._stopped = False

    def on_event(self, host: str, action: str, event: Mapping[str, Any]) -> None:
        if action == "reconnected":
            log.info("event stream of %s is back; looking at it now", host)
            self._request(f"engine-back:{host}")
            return
        name = (event.get("Actor") or {}).get("Attributes", {}).get("name", "?")
        log.debug("docker event %s on %s/%s", action, host, name)
        self._request(f"event:{host}")
        # Docker publishes an event a moment before its container list shows the new state
        # (measured: "die" arrives while the list still says "running"; in a whole-suite run a
        # killed agent was still listed as running by the passes of its "kill", its "die" and a look
        # 0.1 s after the first of them, and nothing looked again). Look now, and again 0.1 s and 1 s
        # after the host's last event, so the state the last event announced is seen either way.
        with self._lock:
            if self._stopped:
                return
            for cancel in self._rechecks.pop(host, []):
                cancel()
            self._rechecks[host] = [
                self._hub.later(delay, lambda: self._request(f"event-recheck:{host}"))
                for delay in EVENT_RECHECK_DELAYS
            ]

    @property
    def threads(self) -> int:
        """Threads these streams hold: the hub's one, plus one per ssh:// host."""
        with self._lock:
            return int(bool(self._hub.streams)) + sum(
                1 for s in self._streams.values() if isinstance(s, EventWatcher)
            )

    def sync(self, loaded: Loaded, only: Collection[str] | None = None) -> None:
        """One stream per host of the desired state (``only``: of these of them: a sharded controller's
        own), on its current endpoint."""
        cluster = loaded.topology.cluster
        wanted: dict[str, Endpoint] = {
            h.name: h.endpoint for h in loaded.fleet.hosts if only is None or h.name in only
        }
        with self._lock:
            for host, stream in list(self._streams.items()):
                if wanted.get(host) != stream.endpoint:
                    self._end(host, stream)
            for host, endpoint in wanted.items():
                if host not in self._streams:
                    self._streams[host] = self._begin(host, endpoint, cluster)

    def _begin(self, host: str, endpoint: Endpoint, cluster: str) -> Stream:
        if served(endpoint):
            return self._hub.watch(HubStream(host, endpoint, cluster, self.on_event))
        watcher = EventWatcher(host, endpoint, cluster, self.on_event)
        watcher.start()
        return watcher

    def _end(self, host: str, stream: Stream) -> None:
        del self._streams[host]
        if isinstance(stream, EventWatcher):
            stream.stop()
        else:
            self._hub.unwatch(host)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for host, stream in list(self._streams.items()):
                self._end(host, stream)
            for cancels in self._rechecks.values():
                for cancel in cancels:
                    cancel()
            self._rechecks.clear()
        self._hub.stop()
