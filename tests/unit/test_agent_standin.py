"""The Consul agent stand-in (tests/agent_standin.py) as processes on the host, no Docker.

Each agent is ``python tests/agent_standin.py agent ...`` on its own loopback address
(127.0.10.100-199, port 8500) with a temporary data dir and short timings (gossip 0.1 s, failure
after 0.5 s, stabilisation 1 s). The assertions are on what the agents answer over HTTP and on
how the processes exit.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.agent_standin import REFUSE_MARKER, parse_flags
from tests.agentprobe import call, eventually

STANDIN = Path(__file__).resolve().parents[1] / "agent_standin.py"
TIMINGS = {"STANDIN_STABILIZE": "1", "STANDIN_GOSSIP_INTERVAL": "0.1", "STANDIN_FAILURE_TIMEOUT": "0.5"}
_next_octet = random.randrange(100, 200)


def _free_address() -> str:
    """A 127.0.10.x address (x in 100..199) whose port 8500 is free right now."""
    global _next_octet
    for _ in range(100):
        address = f"127.0.10.{_next_octet}"
        _next_octet = 100 + (_next_octet - 99) % 100
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the agent's listener does
            try:
                probe.bind((address, 8500))
            except OSError:
                continue
        return address
    raise RuntimeError("no free 127.0.10.100-199 address with port 8500")


class Standin:
    """One stand-in agent process."""

    def __init__(self, folder: Path, name: str, dc: str, *, server: bool = True, expect: int = 3) -> None:
        self.name, self.dc, self.server, self.expect = name, dc, server, expect
        self.address = _free_address()
        self.data_dir = folder / name / "data"
        self.config_dir = folder / name / "config"
        self.log_path = folder / name / "stdout.log"
        self.data_dir.mkdir(parents=True)
        self.config_dir.mkdir(parents=True)
        self.join: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        args = ["agent"] + (["-server", f"-bootstrap-expect={self.expect}"] if self.server else [])
        args += [f"-node={self.name}", f"-datacenter={self.dc}"] + [f"-retry-join={a}" for a in self.join]
        args += ["-client", self.address, "-advertise", self.address, "-ui"]
        return [*args, f"-data-dir={self.data_dir}", "-config-dir", str(self.config_dir)]

    def start(self) -> Standin:
        """Start the process and wait until it answers as itself (another address if its is taken)."""
        for _ in range(5):
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, str(STANDIN), *self.args()],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **TIMINGS},
                )
            if eventually(self._up, 5, f"{self.name} answering") == "up":
                return self
            if self.process.returncode != 0 and "cannot listen" in self.log():
                self.address = _free_address()  # taken meanwhile by another test run: try another
        raise AssertionError(f"{self.name} did not start:\n{self.log()}")

    def _up(self) -> str:
        assert self.process is not None
        if self.process.poll() is not None:
            return "exited"
        status, body = call(self.address, "/v1/agent/self")
        assert status == 200
        assert (body["Config"]["NodeName"], body["Config"]["Datacenter"]) == (self.name, self.dc)
        return "up"

    @property
    def node_id(self) -> str:
        return (self.data_dir / "node-id").read_text().strip()

    @property
    def rpc(self) -> str:
        return f"{self.address}:8300"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def get(self, path: str) -> tuple[int, Any]:
        return call(self.address, path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., Standin]]:
    """A factory of stand-ins under tmp_path; every process still running at the end is killed."""
    made: list[Standin] = []
    dc = f"dc{os.getpid()}-{random.randrange(10**6)}"  # agents of other runs on a reused address stay out

    def make(name: str, **kwargs: Any) -> Standin:
        agent = Standin(tmp_path, name, dc, **kwargs)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        if agent.running():
            agent.signal(signal.SIGKILL)
            agent.wait(5)


def leader_of(agents: Sequence[Standin]) -> Standin:
    """The agent all of ``agents`` name as leader (waits until they agree on one of them)."""

    def agreed() -> str:
        answers = {a.get("/v1/status/leader")[1] for a in agents}
        return answers.pop() if len(answers) == 1 and answers <= {a.rpc for a in agents} else ""

    rpc = eventually(agreed, what="one leader agreed by all")
    return next(a for a in agents if a.rpc == rpc)


def health(agent: Standin) -> tuple[int, dict[str, Any]]:
    status, body = agent.get("/v1/operator/autopilot/health")
    assert status in (200, 429), (status, body)
    return status, body


def healthy(agent: Standin, tolerance: int) -> bool:
    status, body = health(agent)
    return status == 200 and body["Healthy"] is True and body["FailureTolerance"] == tolerance


def start_cluster(make: Callable[..., Standin], count: int = 3) -> list[Standin]:
    servers = [make(f"server{i}", expect=count) for i in range(1, count + 1)]
    for server in servers:
        server.join = [s.address for s in servers if s is not server]
    for server in servers:
        server.start()
    leader_of(servers)
    return servers


@pytest.fixture
def cluster(agents: Callable[..., Standin]) -> list[Standin]:
    """Three servers with -bootstrap-expect=3 that agree on a leader."""
    return start_cluster(agents)


def followers(servers: Sequence[Standin]) -> list[Standin]:
    leader = leader_of([s for s in servers if s.running()])
    return [s for s in servers if s is not leader and s.running()]


def peers(agent: Standin) -> list[str]:
    status, body = agent.get("/v1/status/peers")
    assert status == 200
    return sorted(body)


def raft_servers(agent: Standin) -> dict[str, dict[str, Any]]:
    status, body = agent.get("/v1/operator/raft/configuration")
    assert status == 200, (status, body)
    return {s["Node"]: s for s in body["Servers"]}


# --------------------------------------------------------------------------------------------------


def test_three_servers_bootstrap_agree_and_become_healthy(cluster: list[Standin]) -> None:
    leader = leader_of(cluster)
    assert all(peers(s) == sorted(x.rpc for x in cluster) for s in cluster)
    eventually(lambda: healthy(cluster[1], tolerance=1), what="autopilot healthy")
    _, body = health(cluster[2])  # a follower answers with the leader's view
    assert {s["Name"] for s in body["Servers"]} == {"server1", "server2", "server3"}
    for entry in body["Servers"]:
        assert entry["Voter"] and entry["Healthy"] and entry["SerfStatus"] == "alive"
        assert entry["Leader"] == (entry["Name"] == leader.name)
        assert entry["Address"].endswith(":8300") and entry["StableSince"].endswith("Z")
    config = raft_servers(cluster[0])
    assert {n: (s["ID"], s["Address"], s["Voter"]) for n, s in config.items()} == {
        s.name: (s.node_id, s.rpc, True) for s in cluster
    }
    assert [n for n, s in config.items() if s["Leader"]] == [leader.name]
    assert all(s["ProtocolVersion"] == "3" for s in config.values())

    status, me = cluster[0].get("/v1/agent/self")
    assert status == 200
    assert me["Config"]["NodeName"] == "server1" and me["Config"]["NodeID"] == cluster[0].node_id
    assert me["Config"]["Server"] is True and me["Config"]["Datacenter"] == cluster[0].dc
    assert me["Config"]["Version"] == "1.20.0-standin"
    assert me["Member"]["Tags"]["role"] == "consul" and me["Member"]["Tags"]["port"] == "8300"
    _, members = cluster[0].get("/v1/agent/members")
    assert {(m["Name"], m["Addr"], m["Port"], m["Status"]) for m in members} == {
        (s.name, s.address, 8301, 1) for s in cluster
    }
    assert {m["Tags"]["id"] for m in members} == {s.node_id for s in cluster}
    # The arguments are printed once, at start.
    assert cluster[0].log().splitlines().count(" ".join(cluster[0].args())) == 1


def test_killed_followers_fail_and_quorum_is_lost(cluster: list[Standin]) -> None:
    leader = leader_of(cluster)
    first, second = followers(cluster)
    eventually(lambda: healthy(leader, tolerance=1), what="autopilot healthy")

    first.signal(signal.SIGKILL)
    first.wait(5)

    def failed_voter() -> bool:
        status, body = health(leader)
        entry = next(s for s in body["Servers"] if s["Name"] == first.name)
        return status == 429 and not body["Healthy"] and entry["SerfStatus"] == "failed" and entry["Voter"]

    eventually(failed_voter, what="a failed voter")
    _, body = health(second)
    assert body["FailureTolerance"] == 0
    assert leader_of([leader, second]) is leader
    assert len(peers(second)) == 3  # a killed server stays in the configuration
    _, members = leader.get("/v1/agent/members")
    assert {m["Name"]: m["Status"] for m in members}[first.name] == 4

    second.signal(signal.SIGKILL)
    second.wait(5)
    eventually(lambda: leader.get("/v1/status/leader") == (200, ""), what="no leader")
    assert leader.get("/v1/operator/raft/configuration") == (500, "No cluster leader")
    assert leader.get("/v1/operator/autopilot/health") == (500, "No cluster leader")
    status, stale = leader.get("/v1/operator/raft/configuration?stale")
    assert status == 200 and len(stale["Servers"]) == 3


def test_graceful_leave_of_a_follower_shrinks_the_peer_set(cluster: list[Standin]) -> None:
    leader = leader_of(cluster)
    leaving, staying = followers(cluster)
    started = time.monotonic()
    assert leaving.get("/v1/agent/leave") == (405, "method GET not allowed")
    assert call(leaving.address, "/v1/agent/leave", "PUT") == (200, None)
    assert leaving.wait(3) == 0
    assert time.monotonic() - started < 1.5
    assert peers(leader) == sorted([leader.rpc, staying.rpc])
    eventually(lambda: peers(staying) == sorted([leader.rpc, staying.rpc]), what="2 peers on the follower")
    eventually(lambda: healthy(staying, tolerance=0), what="healthy with 2 servers")
    _, members = leader.get("/v1/agent/members")
    assert {m["Name"]: m["Status"] for m in members}[leaving.name] == 3
    assert "leaving the cluster" in leaving.log()


def test_leader_leaving_hands_over_to_a_follower(cluster: list[Standin]) -> None:
    old = leader_of(cluster)
    rest = followers(cluster)
    assert call(old.address, "/v1/agent/leave", "PUT") == (200, None)
    assert old.wait(3) == 0
    new = leader_of(rest)
    assert new is not old
    eventually(lambda: peers(new) == sorted(s.rpc for s in rest), what="2 peers")
    eventually(lambda: healthy(rest[0], tolerance=0), what="healthy with 2 servers")


def test_sigterm_stops_a_server_at_once_without_leaving(cluster: list[Standin]) -> None:
    leader = leader_of(cluster)
    victim = followers(cluster)[0]
    eventually(lambda: healthy(leader, tolerance=1), what="autopilot healthy")
    started = time.monotonic()
    victim.signal(signal.SIGTERM)
    assert victim.wait(3) == 0
    assert time.monotonic() - started < 1.0

    def failed() -> bool:
        _, members = leader.get("/v1/agent/members")
        return bool({m["Name"]: m["Status"] for m in members}[victim.name] == 4)  # failed, not left

    eventually(failed, what="the server failed")
    assert health(leader)[0] == 429
    assert len(peers(leader)) == 3


def test_a_restarted_server_keeps_its_identity_and_its_vote(cluster: list[Standin]) -> None:
    leader = leader_of(cluster)
    victim = followers(cluster)[0]
    node_id = victim.node_id
    eventually(lambda: healthy(leader, tolerance=1), what="autopilot healthy")
    victim.signal(signal.SIGKILL)
    victim.wait(5)
    eventually(lambda: health(leader)[0] == 429, what="unhealthy")
    victim.start()
    assert victim.get("/v1/agent/self")[1]["Config"]["NodeID"] == node_id
    eventually(lambda: healthy(leader, tolerance=1), what="healthy again")
    entry = raft_servers(leader)[victim.name]
    assert entry["ID"] == node_id and entry["Voter"]
    assert len(peers(leader)) == 3
    assert leader_of(cluster) is leader


def test_a_killed_leader_is_replaced_and_rejoins_as_a_follower(cluster: list[Standin]) -> None:
    old = leader_of(cluster)
    rest = followers(cluster)
    eventually(lambda: healthy(old, tolerance=1), what="autopilot healthy")
    old.signal(signal.SIGKILL)
    old.wait(5)
    new = leader_of(rest)
    assert new is not old
    status, body = health(rest[0])
    assert status == 429 and {s["Name"]: s["SerfStatus"] for s in body["Servers"]}[old.name] == "failed"
    assert body["FailureTolerance"] == 0 and len(peers(new)) == 3
    old.start()
    eventually(lambda: healthy(old, tolerance=1), what="healthy again")
    assert leader_of(cluster) is new  # the restarted server does not take leadership back
    assert raft_servers(new)[old.name]["Voter"]


def _voter_state(leader: Standin, name: str) -> bool | None:
    entry = raft_servers(leader).get(name)
    return None if entry is None else bool(entry["Voter"])


def test_a_new_server_joins_as_non_voter_then_becomes_voter(
    cluster: list[Standin], agents: Callable[..., Standin]
) -> None:
    leader = leader_of(cluster)
    eventually(lambda: healthy(leader, tolerance=1), what="autopilot healthy")
    fourth = agents("server4", expect=4)
    fourth.join = [s.address for s in cluster]
    fourth.start()
    eventually(lambda: _voter_state(leader, "server4") is False, what="server4 a non-voter")
    status, body = health(leader)
    assert status == 429 and not body["Healthy"]
    assert not next(s for s in body["Servers"] if s["Name"] == "server4")["Healthy"]
    assert fourth.rpc in peers(leader)  # Status.Peers lists non-voters too, as in Consul
    eventually(lambda: _voter_state(leader, "server4") is True, what="server4 a voter")
    eventually(lambda: healthy(fourth, tolerance=1), what="healthy with 4 voters")  # 4 - quorum 3
    assert leader_of([*cluster, fourth]) is leader


def test_the_refuse_healthy_marker_keeps_a_server_a_non_voter(
    cluster: list[Standin], agents: Callable[..., Standin]
) -> None:
    leader = leader_of(cluster)
    fourth = agents("server4", expect=4)
    fourth.join = [s.address for s in cluster]
    (fourth.data_dir / REFUSE_MARKER).touch()
    fourth.start()
    eventually(lambda: _voter_state(leader, "server4") is False, what="server4 a non-voter")
    time.sleep(2.5)  # well past the stabilisation time
    assert _voter_state(leader, "server4") is False
    status, body = health(leader)
    assert status == 429 and not body["Healthy"]
    entry = next(s for s in body["Servers"] if s["Name"] == "server4")
    assert entry["SerfStatus"] == "alive" and not entry["Healthy"] and not entry["Voter"]
    (fourth.data_dir / REFUSE_MARKER).unlink()  # the cause goes: the server gets its vote
    eventually(lambda: _voter_state(leader, "server4") is True, what="server4 a voter")
    eventually(lambda: healthy(leader, tolerance=1), what="healthy with 4 voters")


def test_transfer_leader_and_a_client_agent(cluster: list[Standin], agents: Callable[..., Standin]) -> None:
    old = leader_of(cluster)
    follower = followers(cluster)[0]
    assert call(follower.address, "/v1/operator/raft/transfer-leader", "POST") == (200, {"Success": True})
    new = leader_of(cluster)
    assert new is not old
    target = next(s for s in cluster if s is not new)
    path = f"/v1/operator/raft/transfer-leader?id={target.node_id}"
    assert call(new.address, path, "POST") == (200, {"Success": True})
    assert leader_of(cluster) is target
    assert call(target.address, "/v1/operator/raft/transfer-leader?id=nope", "POST")[0] == 500

    client = agents("client1", server=False)
    client.join = [s.address for s in cluster]
    client.start()
    eventually(lambda: client.get("/v1/status/leader") == (200, target.rpc), what="leader via client")
    assert peers(client) == sorted(s.rpc for s in cluster)
    _, me = client.get("/v1/agent/self")
    assert me["Config"]["Server"] is False and me["Member"]["Tags"]["role"] == "node"

    def all_members() -> bool:
        _, members = client.get("/v1/agent/members")
        return {m["Name"]: m["Status"] for m in members} == {s.name: 1 for s in [*cluster, client]}

    eventually(all_members, what="the client sees every member")
    eventually(lambda: healthy(client, tolerance=1), what="autopilot through the client")
    _, on_server = target.get("/v1/agent/members")
    assert {m["Name"]: m["Tags"]["role"] for m in on_server}["client1"] == "node"

    client.signal(signal.SIGTERM)  # a client leaves on SIGTERM (Consul's default for clients)
    assert client.wait(3) == 0

    def client_left() -> bool:
        _, members = target.get("/v1/agent/members")
        return bool({m["Name"]: m["Status"] for m in members}["client1"] == 3)

    eventually(client_left, what="the client left")


# --------------------------------------------------------------------------------------------------


def test_flags_in_both_forms_and_unknown_ones_ignored(tmp_path: Path) -> None:
    (tmp_path / "encrypt.json").write_text('{"encrypt": "c2VjcmV0", "retry_join": ["127.0.10.9"]}')
    opts = parse_flags(
        ["-server", "-bootstrap-expect=3", "-node=host1", "-datacenter=dc2", "-retry-join=127.0.10.2",
         "-retry-join", "127.0.10.3", "-client", "127.0.10.1", "-advertise", "127.0.10.1", "-ui",
         "-encrypt", "abc", "-dev", f"--config-dir={tmp_path}", "-log-level=debug"]
    )  # fmt: skip
    assert (opts.server, opts.ui, opts.bootstrap_expect, opts.node, opts.datacenter) == (
        True, True, 3, "host1", "dc2"
    )  # fmt: skip
    assert opts.retry_join == ["127.0.10.9", "127.0.10.2", "127.0.10.3"]
    assert (opts.client, opts.advertise, opts.data_dir, opts.encrypt) == (
        "127.0.10.1", "127.0.10.1", "/consul/data", True
    )  # fmt: skip
    assert opts.ignored == ["-encrypt=abc", "-dev", "-log-level=debug"]

    client = parse_flags(["-server=false", "-bind=127.0.10.7", "-client", "0.0.0.0", "-config-dir=/none"])
    assert not client.server and client.advertise == "127.0.10.7" and client.client == "0.0.0.0"
    with pytest.raises(ValueError, match="-client"):
        parse_flags(["-client"])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        parse_flags([f"-config-dir={tmp_path}"])


def test_command_line_usage() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(STANDIN), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=10)

    version = run("version")
    assert version.returncode == 0 and "1.20.0-standin" in version.stdout
    assert run("members").returncode == 1
    with contextlib.suppress(FileNotFoundError):
        assert run("agent", "-node").returncode == 1
