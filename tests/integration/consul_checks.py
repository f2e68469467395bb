"""What the Consul-facing tests ask the agents, over Consul's own HTTP API with the token on every
request (py-consul leaves it off some calls, agent/self among them): a sampler of every server's
leader, raft configuration and member statuses, and the checks around a rollout."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from tests.integration.harness import Fleet

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


def get(addr: str, path: str, token: str | None, timeout: float = 1.0) -> Any:
    headers = {"X-Consul-Token": token} if token else {}
    request = urllib.request.Request(f"http://{addr}{path}", headers=headers)
    with _OPENER.open(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


@dataclass
class Sampler:
    """Polls every server, each from its own thread, 20 times a second (a slow answer from one server
    delays no other): its leader and raft configuration on every poll, its members on every fourth.
    A recorder snapshots the latest answer of every server every ``period``; a server whose last poll
    failed counts as not answering (None)."""

    addresses: dict[str, str]  # node -> "ip:8500"
    token: str | None = None
    period: float = 0.05
    samples: list[tuple[float, dict[str, str | None]]] = field(default_factory=list)
    statuses: dict[str, set[int]] = field(default_factory=dict)  # node -> member Status values seen
    # node -> each change of its Status as one server saw it: (when, observing server, new Status)
    changes: dict[str, list[tuple[float, str, int]]] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)  # node -> polls answered or failed
    _latest: dict[str, str | None] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _started: float = 0.0
    _ended: float = 0.0

    def _poll(self, node: str, addr: str) -> None:
        count = 0
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                leader = get(addr, "/v1/status/leader", self.token, 1.0)
                get(addr, "/v1/operator/raft/configuration?stale", self.token, 1.0)
                if count % 4 == 0:
                    for member in get(addr, "/v1/agent/members", self.token, 1.0):
                        if member.get("Tags", {}).get("role") == "consul":
                            self._saw(node, member["Name"], int(member["Status"]))
                self._latest[node] = leader
            except Exception:
                self._latest[node] = None  # not answering (down, or being replaced)
            count += 1
            self.polls[node] = count
            self._stop.wait(max(0.0, self.period - (time.monotonic() - began)))

    def _saw(self, observer: str, node: str, status: int) -> None:
        self.statuses.setdefault(node, set()).add(status)
        seen = self.changes.setdefault(node, [])
        last = next((s for _when, who, s in reversed(seen) if who == observer), None)
        if status != last:
            seen.append((time.monotonic(), observer, status))

    def first_departure(self, node: str) -> int | None:
        """The first Status other than alive (1) any server saw ``node`` in: leaving (2) or left (3)
        when it left gracefully, failed (4) when it vanished unannounced; None if it never left."""
        return next((status for _when, _who, status in self.changes.get(node, []) if status != 1), None)

    def _record(self) -> None:
        while not self._stop.wait(self.period):
            if len(self._latest) == len(self.addresses):  # every server polled once
                self.samples.append((time.monotonic(), dict(self._latest)))

    def __enter__(self) -> Sampler:
        self._started = time.monotonic()
        for node, addr in self.addresses.items():
            self._threads.append(threading.Thread(target=self._poll, args=(node, addr), daemon=True))
        self._threads.append(threading.Thread(target=self._record, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._ended = time.monotonic()
        for thread in self._threads:
            thread.join(5)

    def rates(self) -> dict[str, float]:
        """Polls per second of each server over the sampling."""
        took = max(1e-9, (self._ended or time.monotonic()) - self._started)
        return {node: self.polls.get(node, 0) / took for node in self.addresses}

    def leader_at(self, index: int) -> str | None:
        known = {v for v in self.samples[index][1].values() if v}
        return known.pop() if len(known) == 1 else None

    def windows(self) -> list[tuple[float, str | None, str | None]]:
        """Each stretch in which no live server reported a leader: (length, leader before, after)."""
        found: list[tuple[float, str | None, str | None]] = []
        start: int | None = None
        for i, (_, leaders) in enumerate(self.samples):
            has_leader = any(v for v in leaders.values())
            if not has_leader and start is None:
                start = i
            elif has_leader and start is not None:
                before = self.leader_at(start - 1) if start > 0 else None
                found.append((self.samples[i][0] - self.samples[start][0], before, self.leader_at(i)))
                start = None
        if start is not None:
            found.append((self.samples[-1][0] - self.samples[start][0], None, None))
        return found

    def most_down(self) -> int:
        return max((sum(1 for v in leaders.values() if v is None) for _, leaders in self.samples), default=0)


def leader_node(fleet: Fleet, servers: int, token: str | None = None) -> str:
    for host in fleet.doc["hosts"][:servers]:
        try:
            raft = get(f"{host['advertise']}:8500", "/v1/operator/raft/configuration", token)
            return next(s["Node"] for s in raft["Servers"] if s["Leader"])
        except Exception:
            continue
    raise AssertionError("no server reports a leader")


def healthy(fleet: Fleet, servers: int, token: str | None = None) -> bool:
    addr = fleet.doc["hosts"][0]["advertise"]
    try:
        body = get(f"{addr}:8500", "/v1/operator/autopilot/health", token)
    except Exception:
        return False
    return bool(body["Healthy"]) and len(body["Servers"] or []) == servers


def images(fleet: Fleet, count: int) -> list[str | None]:
    found = []
    for engine in fleet.engines[:count]:
        attrs = fleet.containers(engine).get("consul")
        found.append(attrs["Config"]["Image"] if attrs and attrs["State"]["Running"] else None)
    return found


def try_get(addr: str, path: str, token: str | None, timeout: float = 1.0) -> Any:
    """``get``, or None while the agent does not answer (starting, restarting, gone)."""
    try:
        return get(addr, path, token, timeout)
    except Exception:
        return None


def try_put(addr: str, path: str, timeout: float, token: str | None = None) -> int | None:
    """A PUT with no body; the HTTP status, or None when the agent did not answer."""
    headers = {"X-Consul-Token": token} if token else {}
    request = urllib.request.Request(f"http://{addr}{path}", data=b"", method="PUT", headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status)
    except Exception:
        return None
