"""Docker API requests counted per host and kind: the benchmarks give a counter to ``Connections``."""

from __future__ import annotations

import threading


class RequestCounter:
    """``Connections(on_request=counter)``: counts every Docker request by host and ``METHOD /route``.

    Hosts are observed in parallel, so the counts are kept under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}  # (host, request) -> requests

    def __call__(self, host: str, request: str) -> None:
        with self._lock:
            self._counts[(host, request)] = self._counts.get((host, request), 0) + 1

    def total(self, host: str | None = None) -> int:
        """Requests counted since the last reset (all hosts, or one)."""
        with self._lock:
            return sum(n for (h, _), n in self._counts.items() if host is None or h == host)

    def kinds(self) -> list[str]:
        """The requests counted since the last reset, each once (``GET /containers/json``), sorted."""
        with self._lock:
            return sorted({request for _, request in self._counts})

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
