"""Consul-aware rollouts on real engines with agent stand-ins (tests/agent_standin.py).

The stand-ins are a model of Consul (a leader only while a majority of the raft voters is alive; a
graceful leave shrinks the peer set; a new server becomes a voter after a stabilisation time), not
Consul. A sampler polls /v1/status/leader and /v1/agent/members on every server during the rollout.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.agent_image import AGENT_IMAGE_1, AGENT_IMAGE_2, ensure_agent_image
from tests.fleet import Engine
from tests.integration.controller_harness import ControllerProcess, audit_rows, wait_for
from tests.integration.harness import Fleet

LONG_INTERVAL = "600"


def rollout_fleet(engines: list[Engine], tmp: Path, servers: int, clients: int = 0) -> Fleet:
    ensure_agent_image(engines)
    fleet = Fleet(engines[: servers + clients], tmp, cluster="roll")
    fleet.doc["consul"]["image"] = AGENT_IMAGE_1
    fleet.doc["consul"]["ui"] = False
    fleet.doc["rollout"] = {
        "gates": True,
        "deadline": 30,
        "stabilization": 1,
        "max_parallel": 2,
        "agent_timeout": 20,
    }
    for i, host in enumerate(fleet.doc["hosts"]):
        host["role"] = "server" if i < servers else "client"
        host["client_address"] = host["advertise"]
    fleet.write()
    return fleet


@dataclass
class Sampler:
    """Polls every server's /v1/status/leader and /v1/agent/members until stopped."""

    addresses: dict[str, str]  # node -> "ip:8500"
    period: float = 0.05
    samples: list[tuple[float, dict[str, str | None]]] = field(default_factory=list)
    statuses: dict[str, set[int]] = field(default_factory=dict)  # node -> member Status values seen
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _get(self, addr: str, path: str) -> Any:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=0.5) as response:
            return json.loads(response.read() or b"null")

    def _loop(self) -> None:
        while not self._stop.is_set():
            leaders: dict[str, str | None] = {}
            for node, addr in self.addresses.items():
                try:
                    leaders[node] = self._get(addr, "/v1/status/leader")
                    for member in self._get(addr, "/v1/agent/members"):
                        if member.get("Tags", {}).get("role") == "consul":
                            self.statuses.setdefault(member["Name"], set()).add(int(member["Status"]))
                except Exception:
                    leaders[node] = None  # not answering (down, or being replaced)
            self.samples.append((time.monotonic(), leaders))
            self._stop.wait(self.period)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def gaps(self) -> list[float]:
        """Lengths of the stretches during which no live server reported a leader."""
        gaps: list[float] = []
        start: float | None = None
        for at, leaders in self.samples:
            has_leader = any(v for v in leaders.values())
            if not has_leader and start is None:
                start = at
            elif has_leader and start is not None:
                gaps.append(at - start)
                start = None
        if start is not None:
            gaps.append(self.samples[-1][0] - start)
        return gaps


def leader_node(fleet: Fleet, servers: int) -> str:
    for host in fleet.doc["hosts"][:servers]:
        try:
            with urllib.request.urlopen(
                f"http://{host['advertise']}:8500/v1/operator/raft/configuration", timeout=1
            ) as response:
                raft = json.loads(response.read())
            return next(s["Node"] for s in raft["Servers"] if s["Leader"])
        except Exception:
            continue
    raise AssertionError("no server reports a leader")


def healthy(fleet: Fleet, servers: int) -> bool:
    addr = fleet.doc["hosts"][0]["advertise"]
    try:
        with urllib.request.urlopen(
            f"http://{addr}:8500/v1/operator/autopilot/health", timeout=1
        ) as response:
            body = json.loads(response.read())
    except Exception:
        return False
    return bool(body["Healthy"]) and len(body["Servers"]) == servers


def images(fleet: Fleet, count: int) -> list[str | None]:
    found = []
    for engine in fleet.engines[:count]:
        attrs = fleet.containers(engine).get("consul")
        found.append(attrs["Config"]["Image"] if attrs and attrs["State"]["Running"] else None)
    return found


@pytest.fixture
def controllers(tmp_path: Path) -> Iterator[Any]:
    started: list[ControllerProcess] = []

    def start(fleet: Fleet, *args: str) -> ControllerProcess:
        proc = ControllerProcess(
            fleet.file,
            fleet.db,
            tmp_path / f"controller-{len(started)}.log",
            "--interval",
            LONG_INTERVAL,
            "--stop-timeout",
            "10",
            *args,
            env=fleet.env,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def converge(fleet: Fleet, servers: int) -> None:
    run = fleet.apply()
    assert run.code == 0, run.stdout + run.stderr
    wait_for(lambda: healthy(fleet, servers), 30, f"{servers} healthy servers")


@pytest.mark.parametrize("servers", [3, 5])
def test_rolling_upgrade_followers_first_leader_last_quorum_kept(
    clean_fleet5: list[Engine], tmp_path: Path, servers: int
) -> None:
    fleet = rollout_fleet(clean_fleet5, tmp_path, servers)
    converge(fleet, servers)
    first_leader = leader_node(fleet, servers)
    addresses = {h["name"]: f"{h['advertise']}:8500" for h in fleet.doc["hosts"][:servers]}
    fleet.doc["consul"]["image"] = AGENT_IMAGE_2
    fleet.write()
    with Sampler(addresses) as sampler:
        run = fleet.apply()
        assert run.code == 0, run.stdout + run.stderr
        wait_for(lambda: healthy(fleet, servers), 30, "healthy after the rollout")
    assert images(fleet, servers) == [AGENT_IMAGE_2] * servers
    replaced = audit_rows(
        fleet.db, "SELECT node FROM actions WHERE kind='replace' AND status='succeeded' ORDER BY id"
    )
    assert len(replaced) == servers
    assert replaced[-1][0] == first_leader  # the old leader went last
    # a leader at every sample, but for at most one short election window per leader change
    gaps = sampler.gaps()
    assert len(gaps) <= 1 and all(g < 3.0 for g in gaps), gaps
    # each server left gracefully (seen as "left", 3) and none was ever seen failed (4)
    for node in addresses:
        assert 3 in sampler.statuses.get(node, set()), (node, sampler.statuses)
        assert 4 not in sampler.statuses.get(node, set()), (node, sampler.statuses)


def test_never_healthy_replacement_pauses_then_resume_completes(
    clean_fleet5: list[Engine], tmp_path: Path
) -> None:
    fleet = rollout_fleet(clean_fleet5, tmp_path, 3)
    fleet.doc["rollout"]["deadline"] = 8
    fleet.write()
    converge(fleet, 3)
    leader = leader_node(fleet, 3)
    victim = next(h for h in fleet.doc["hosts"][:3] if h["name"] != leader)
    marker = Path(victim["data_dir"]) / "standin-refuse-healthy"
    fleet.doc["consul"]["image"] = AGENT_IMAGE_2
    fleet.write()
    # The first follower is replaced first; once its replacement has begun (its old container passed
    # the gate and leaves), mark its data so the new container never becomes healthy.
    result: dict[str, Any] = {}
    applying = threading.Thread(target=lambda: result.update(run=fleet.apply()))
    applying.start()
    wait_for(
        lambda: audit_rows(
            fleet.db, "SELECT id FROM actions WHERE kind='replace' AND node=?", victim["name"]
        ),
        20,
        "the victim's replacement to begin",
        interval=0.01,
    )
    marker.write_text("test: this server never becomes healthy\n")
    applying.join(60)
    run = result["run"]
    assert run.code == 1
    failed = audit_rows(fleet.db, "SELECT node, error FROM actions WHERE kind='replace' AND status='failed'")
    assert [n for n, _ in failed] == [victim["name"]]
    assert "rollout paused" in failed[0][1]
    assert images(fleet, 3).count(AGENT_IMAGE_2) == 1  # no second server touched
    again = fleet.apply()  # still paused: nothing about servers moves
    assert again.code == 1
    assert "rollout paused" in again.stderr
    status = fleet.cli("status", str(fleet.file), "--db", str(fleet.db), "--json").json()
    assert "rollout paused" in status["rollout_paused"]
    assert images(fleet, 3).count(AGENT_IMAGE_2) == 1
    marker.unlink()
    resumed = fleet.cli("resume", str(fleet.file), "--db", str(fleet.db))
    assert resumed.code == 0 and "resumed" in resumed.stdout
    final = fleet.apply()
    assert final.code == 0, final.stdout + final.stderr
    assert images(fleet, 3) == [AGENT_IMAGE_2] * 3


def test_server_killed_during_rollout_waits_then_repairs(
    clean_fleet5: list[Engine], tmp_path: Path, controllers: Any
) -> None:
    fleet = rollout_fleet(clean_fleet5, tmp_path, 3)
    converge(fleet, 3)
    ctl = controllers(fleet)
    ctl.wait_ready()
    leader = leader_node(fleet, 3)
    followers = [h for h in fleet.doc["hosts"][:3] if h["name"] != leader]
    fleet.doc["consul"]["image"] = AGENT_IMAGE_2
    fleet.write()
    wait_for(lambda: audit_rows(fleet.db, "SELECT id FROM actions WHERE kind='replace'"), 15, "the rollout")
    # kill the other follower by hand while the first one is being replaced
    other = next(e for e in fleet.engines if e.name == followers[1]["name"])
    client = other.client()
    try:
        client.containers.get("consul").kill()
    finally:
        client.close()
    wait_for(lambda: images(fleet, 3) == [AGENT_IMAGE_2] * 3, 120, "the rollout to finish after the repair")
    wait_for(lambda: healthy(fleet, 3), 30, "healthy")
    waiting = audit_rows(fleet.db, "SELECT error FROM actions WHERE status='waiting'")
    starts = audit_rows(fleet.db, "SELECT node FROM actions WHERE kind='start'")
    assert waiting or starts  # it waited for, or repaired, the killed server before going on
    replaced = audit_rows(
        fleet.db, "SELECT node FROM actions WHERE kind='replace' AND status='succeeded' ORDER BY id"
    )
    assert [n for (n,) in replaced][-1] == leader


def test_scale_3_to_5_to_3_and_parallel_clients(clean_fleet5: list[Engine], tmp_path: Path) -> None:
    fleet = rollout_fleet(clean_fleet5, tmp_path, 3, clients=2)
    converge(fleet, 3)
    before = fleet.ids()
    for host in fleet.doc["hosts"][3:]:
        host["role"] = "server"
    fleet.write()
    run = fleet.apply()
    assert run.code == 0, run.stdout + run.stderr
    wait_for(lambda: healthy(fleet, 5), 30, "five healthy servers")
    after = fleet.ids()
    for host in fleet.doc["hosts"][:3]:  # the existing three untouched
        assert after[(host["name"], "consul")] == before[(host["name"], "consul")]
    # back to three: one removal at a time, each with a leave, each gated
    for host in fleet.doc["hosts"][3:]:
        host["role"] = "client"
    fleet.doc["consul"]["client_image"] = AGENT_IMAGE_2
    fleet.write()
    run = fleet.apply()
    assert run.code == 0, run.stdout + run.stderr
    wait_for(lambda: healthy(fleet, 3), 30, "three healthy servers again")
    rows = audit_rows(
        fleet.db,
        "SELECT node, kind, started_at, finished_at FROM actions WHERE kind='replace' "
        "AND status='succeeded' AND role='client' ORDER BY id",
    )
    assert {n for n, *_ in rows} == {"host4", "host5"}


def test_controller_killed_mid_rollout_continues(
    clean_fleet5: list[Engine], tmp_path: Path, controllers: Any
) -> None:
    fleet = rollout_fleet(clean_fleet5, tmp_path, 3)
    converge(fleet, 3)
    addresses = {h["name"]: f"{h['advertise']}:8500" for h in fleet.doc["hosts"][:3]}
    ctl = controllers(fleet)
    ctl.wait_ready()
    fleet.doc["consul"]["image"] = AGENT_IMAGE_2
    fleet.write()
    with Sampler(addresses) as sampler:
        wait_for(
            lambda: audit_rows(
                fleet.db, "SELECT id FROM actions WHERE kind='replace' AND status='succeeded'"
            ),
            30,
            "the first server replaced",
        )
        ctl.signal(signal.SIGKILL)
        ctl.wait(10)
        restarted = controllers(fleet)
        restarted.wait_ready(60)
        wait_for(lambda: images(fleet, 3) == [AGENT_IMAGE_2] * 3, 120, "the rollout to continue")
        wait_for(lambda: healthy(fleet, 3), 30, "healthy")
    # never two servers down at once: at every sample at most one server did not answer
    assert all(sum(1 for v in leaders.values() if v is None) <= 1 for _, leaders in sampler.samples)
