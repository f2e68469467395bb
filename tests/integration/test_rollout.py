"""Consul-aware rollouts on real engines with agent stand-ins (tests/agent_standin.py).

The stand-ins are a model of Consul, not Consul, faithful where the rollout depends on it: a leave is
synchronous and takes Consul's 5 s drain, an election after a leader is lost takes raft's timeout
(raft_multiplier 1: 1-2 s), a leader exists only while a majority of the raft voters is alive, a new
server becomes a voter after a stabilisation time, and with ACLs on (default deny) every endpoint
the controller calls needs the token. A sampler polls /v1/status/leader,
/v1/operator/raft/configuration and /v1/agent/members on every server during the rollout.
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
import yaml

from tests.agent_image import ACL_TOKEN, ensure_acl_agent_images, ensure_agent_image
from tests.agent_standin import REFUSE_LEAVE_MARKER
from tests.fleet import AGENT_IMAGE_1, AGENT_IMAGE_2, Engine
from tests.integration.controller_harness import ControllerProcess, audit_rows, stop_all, wait_for
from tests.integration.harness import Fleet

LONG_INTERVAL = "600"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


@dataclass
class Images:
    old: str
    new: str
    token: str | None = None


def rollout_fleet(
    engines: list[Engine], tmp: Path, servers: int, clients: int = 0, *, acl: bool = False
) -> tuple[Fleet, Images]:
    ensure_agent_image(engines)
    images = Images(AGENT_IMAGE_1, AGENT_IMAGE_2)
    fleet = Fleet(engines[: servers + clients], tmp, cluster="roll")
    if acl:
        old, new = ensure_acl_agent_images(engines)
        images = Images(old, new, ACL_TOKEN)
        fleet.env["CONSUL_HTTP_TOKEN"] = ACL_TOKEN  # the gates' token (never printed)
    fleet.doc["consul"]["image"] = images.old
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
    return fleet, images


def get(addr: str, path: str, token: str | None, timeout: float = 1.0) -> Any:
    headers = {"X-Consul-Token": token} if token else {}
    request = urllib.request.Request(f"http://{addr}{path}", headers=headers)
    with _OPENER.open(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


@dataclass
class Sampler:
    """Polls every server's leader, raft configuration and members until stopped (10+ times a second)."""

    addresses: dict[str, str]  # node -> "ip:8500"
    token: str | None = None
    period: float = 0.05
    samples: list[tuple[float, dict[str, str | None]]] = field(default_factory=list)
    statuses: dict[str, set[int]] = field(default_factory=dict)  # node -> member Status values seen
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            leaders: dict[str, str | None] = {}
            for node, addr in self.addresses.items():
                try:
                    leaders[node] = get(addr, "/v1/status/leader", self.token, 0.5)
                    get(addr, "/v1/operator/raft/configuration?stale", self.token, 0.5)
                    for member in get(addr, "/v1/agent/members", self.token, 0.5):
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
    stop_all(started)


def converge(fleet: Fleet, servers: int, token: str | None = None) -> None:
    run = fleet.apply()
    assert run.code == 0, run.stdout + run.stderr
    wait_for(lambda: healthy(fleet, servers, token), 30, f"{servers} healthy servers")


@pytest.mark.parametrize(("servers", "acl"), [(3, False), (3, True), (5, True)], ids=["3", "3-acl", "5-acl"])
def test_rolling_upgrade_followers_first_leader_last_quorum_kept(
    clean_fleet5: list[Engine], tmp_path: Path, servers: int, acl: bool
) -> None:
    fleet, img = rollout_fleet(clean_fleet5, tmp_path, servers, acl=acl)
    converge(fleet, servers, img.token)
    first_leader = leader_node(fleet, servers, img.token)
    addresses = {h["name"]: f"{h['advertise']}:8500" for h in fleet.doc["hosts"][:servers]}
    fleet.doc["consul"]["image"] = img.new
    fleet.write()
    with Sampler(addresses, img.token) as sampler:
        run = fleet.apply()
        assert run.code == 0, run.stdout + run.stderr
        wait_for(lambda: healthy(fleet, servers, img.token), 30, "healthy after the rollout")
    assert images(fleet, servers) == [img.new] * servers
    replaced = audit_rows(
        fleet.db, "SELECT node FROM actions WHERE kind='replace' AND status='succeeded' ORDER BY id"
    )
    assert len(replaced) == servers
    assert replaced[-1][0] == first_leader  # the old leader went last
    assert ACL_TOKEN not in run.stdout + run.stderr + fleet.db.read_bytes().decode("latin-1")
    # never two servers down at once
    assert sampler.most_down() <= 1, sampler.most_down()
    # a leader at every sample but for elections: every leaderless stretch ends with a new leader
    # (the old one left), whatever the election took; its length is reported, not bounded
    windows = sampler.windows()
    print(f"leaderless windows (s, before, after): {windows}")
    assert len(windows) <= 1, windows
    for _length, before, after in windows:
        assert after is not None and after != before, windows
    # each server left gracefully (seen as "left", 3) and none was ever seen failed (4)
    for node in addresses:
        assert 3 in sampler.statuses.get(node, set()), (node, sampler.statuses)
        assert 4 not in sampler.statuses.get(node, set()), (node, sampler.statuses)


def test_a_leave_that_answers_late_is_judged_by_what_is_observed(
    clean_fleet5: list[Engine], tmp_path: Path
) -> None:
    """rollout.leave_timeout below Consul's drain: each leave call times out, yet the servers have left
    (the others see them "left"), so each replacement goes on, and none fails or pauses."""
    fleet, img = rollout_fleet(clean_fleet5, tmp_path, 3)
    fleet.doc["rollout"]["leave_timeout"] = 2
    fleet.write()
    converge(fleet, 3)
    fleet.doc["consul"]["image"] = img.new
    fleet.write()
    run = fleet.apply()
    assert run.code == 0, run.stdout + run.stderr
    assert run.stderr.count("did not answer within 2s") == 3, run.stderr
    seen = run.stderr.count("the other servers see it left") + run.stderr.count("container is not running")
    assert seen == 3, run.stderr
    assert images(fleet, 3) == [img.new] * 3
    assert audit_rows(fleet.db, "SELECT count(*) FROM actions WHERE status != 'succeeded'") == [(0,)]


def test_a_refused_leave_stops_nothing_and_restores_the_restart_policy(
    clean_fleet5: list[Engine], tmp_path: Path
) -> None:
    fleet, img = rollout_fleet(clean_fleet5, tmp_path, 3)
    converge(fleet, 3)
    leader = leader_node(fleet, 3)
    followers = [h for h in fleet.doc["hosts"][:3] if h["name"] != leader]
    for host in followers:  # whichever follower goes first, its agent refuses to leave
        (Path(host["data_dir"]) / REFUSE_LEAVE_MARKER).write_text("test: this agent's leave fails\n")
    before = fleet.ids()
    fleet.doc["consul"]["image"] = img.new
    fleet.write()
    run = fleet.apply()
    assert run.code == 1
    failed = audit_rows(fleet.db, "SELECT node, error FROM actions WHERE kind='replace' AND status='failed'")
    assert len(failed) == 1 and "did not leave gracefully" in failed[0][1], failed
    assert "not stopping it" in failed[0][1]
    victim = next(e for e in fleet.engines if e.name == failed[0][0])
    attrs = fleet.containers(victim)["consul"]
    assert attrs["Id"] == before[(victim.name, "consul")] and attrs["State"]["Running"]
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"  # as the spec has it, not "no"
    assert set(fleet.containers(victim)) == {"consul", "registrator"}  # the temporary one is gone too
    assert images(fleet, 3) == [img.old] * 3  # no server was touched
    assert healthy(fleet, 3)


def test_never_healthy_replacement_pauses_then_resume_completes(
    clean_fleet5: list[Engine], tmp_path: Path
) -> None:
    fleet, _ = rollout_fleet(clean_fleet5, tmp_path, 3)
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
    fleet, _ = rollout_fleet(clean_fleet5, tmp_path, 3)
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
    fleet, _ = rollout_fleet(clean_fleet5, tmp_path, 3, clients=2)
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
    fleet, _ = rollout_fleet(clean_fleet5, tmp_path, 3)
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


def test_a_rollout_pause_holds_on_the_next_leader(clean_fleet5: list[Engine], tmp_path: Path) -> None:
    """The pause is kept in Consul next to the desired state: a controller that takes over with its own
    audit database still touches no server until `resume`."""
    from tests.consul_double import ConsulDouble

    fleet, img = rollout_fleet(clean_fleet5, tmp_path, 3)
    fleet.doc["rollout"]["deadline"] = 8
    fleet.write()
    converge(fleet, 3)
    leader = leader_node(fleet, 3)
    victim = next(h for h in fleet.doc["hosts"][:3] if h["name"] != leader)  # the first one replaced
    fleet.doc["consul"]["image"] = img.new
    key = "infra/topology"
    with ConsulDouble(min_ttl=1.0) as consul:
        consul.kv_put(key, yaml.safe_dump(fleet.doc, sort_keys=False).encode())
        source = f"consul://{consul.address}/{key}"
        lock = ("--lock-ttl", "2", "--lock-delay", "1", "--interval", LONG_INTERVAL)
        first = ControllerProcess(source, tmp_path / "a.db", tmp_path / "a.log", *lock, env=fleet.env)
        try:
            began = "SELECT id FROM actions WHERE kind='replace' AND node=?"
            wait_for(
                lambda: audit_rows(tmp_path / "a.db", began, victim["name"]),
                30,
                "the victim's replacement to begin",
                interval=0.01,
            )
            (Path(victim["data_dir"]) / "standin-refuse-healthy").write_text("test: never healthy\n")
            wait_for(lambda: consul.kv_get(f"{key}.pause") is not None, 60, "the rollout to pause")
        finally:
            first.signal(signal.SIGKILL)
            first.wait(10)
        assert images(fleet, 3).count(img.new) == 1
        second = ControllerProcess(source, tmp_path / "b.db", tmp_path / "b.log", *lock, env=fleet.env)
        try:
            wait_for(lambda: "rollout paused" in second.log(), 30, "the new leader to see the pause")
            time.sleep(3)
            assert images(fleet, 3).count(img.new) == 1  # still no second server touched
            (Path(victim["data_dir"]) / "standin-refuse-healthy").unlink()
            resumed = fleet.cli("resume", source, "--db", str(tmp_path / "c.db"))
            assert resumed.code == 0 and "resumed" in resumed.stdout, resumed.stdout + resumed.stderr
            assert consul.kv_get(f"{key}.pause") is None
            wait_for(lambda: images(fleet, 3) == [img.new] * 3, 120, "the rollout to complete")
        finally:
            second.stop()
