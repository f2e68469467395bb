"""The Docker event streams the controller follows: one per desired host, each event a request for a pass."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from desired_state.load import Loaded
from desired_state.spec import Endpoint
from reconciler.triggers import EventWatcher

# the controller's logger: operators filter on it
log = logging.getLogger("consul_reconciler.controller")

# Seconds after the last event at which the controller looks once more (see on_event)
EVENT_RECHECK_DELAYS = (0.1, 1.0)


class EventWatchers:
    def __init__(self, request: Callable[[str], None]) -> None:
        self._request = request
        self._watchers: dict[str, EventWatcher] = {}
        self._lock = threading.Lock()
        self._rechecks: list[threading.Timer] = []

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
        # after the last event, so the state the last event announced is seen either way.
        with self._lock:
            for timer in self._rechecks:
                timer.cancel()
            self._rechecks = [self._recheck(delay, host) for delay in EVENT_RECHECK_DELAYS]

    def _recheck(self, delay: float, host: str) -> threading.Timer:
        timer = threading.Timer(delay, self._request, args=[f"event-recheck:{host}"])
        timer.daemon = True
        timer.start()
        return timer

    def sync(self, loaded: Loaded) -> None:
        """One stream per host of the desired state, on its current endpoint."""
        cluster = loaded.topology.cluster
        wanted: dict[str, Endpoint] = {h.name: h.endpoint for h in loaded.fleet.hosts}
        for host, watcher in list(self._watchers.items()):
            if wanted.get(host) != watcher.endpoint:
                watcher.stop()
                del self._watchers[host]
        for host, endpoint in wanted.items():
            if host not in self._watchers:
                watcher = EventWatcher(host, endpoint, cluster, self.on_event)
                watcher.start()
                self._watchers[host] = watcher

    def stop(self) -> None:
        for watcher in self._watchers.values():
            watcher.stop()
        with self._lock:
            for timer in self._rechecks:
                timer.cancel()
