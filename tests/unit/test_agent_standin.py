"""The Consul agent stand-in (testbed/agent_standin.py) as processes on the host, no Docker.

Each agent is ``python testbed/agent_standin.py agent ...`` on its own loopback address
(127.0.10.100-199, port 8500) with a temporary data dir and short gossip timings (gossip 0.1 s,
failure after 0.5 s, stabilisation 1 s), raft at Consul's production setting raft_multiplier=1
(heartbeat timeout 1 s) and Consul's default leave drain (5 s). The assertions are on what the
agents answer over HTTP and on how the processes exit; times are asserted only as lower bounds
(what the model must at least take, as Consul does), never as upper bounds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from reconciler.consul_api import ConsulError
from reconciler.snapshots import SnapshotTaker, verify_file
from testbed.agent_standin import REFUSE_MARKER, parse_flags
from testbed.agentprobe import (
    DRAIN,
    HEARTBEAT,
    STANDIN,
    TOKEN,
    Standin,
    call,
    eventually,
    leader_of,
    start_cluster,
)


def health(agent: Standin) -> tuple[int, dict[str, Any]]:
    status, body = agent.get("/v1/operator/autopilot/health")
    assert status in (200, 429), (status, body)
    return status, body


def healthy(agent: Standin, tolerance: int) -> bool:
    status, body = health(agent)
    return status == 200 and body["Healthy"] is True and body["FailureTolerance"] == tolerance


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


def test_graceful_leave_of_a_follower_is_synchronous_and_shrinks_the_peer_set(cluster: list[Standin]) -> None:
    leader = leader_of(cluster)
    leaving, staying = followers(cluster)
    assert leaving.get("/v1/agent/leave") == (405, "method GET not allowed")
    seen: dict[str, set[int]] = {}
    sampling = threading.Event()

    def sample() -> None:  # what the leader says of the leaving server while its leave is in flight
        while not sampling.is_set():
            with contextlib.suppress(OSError, AssertionError, KeyError):
                _, members = leader.get("/v1/agent/members")
                seen.setdefault("status", set()).add({m["Name"]: m["Status"] for m in members}[leaving.name])
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    # Consul answers only once the agent has left: after the drain, out of the raft configuration
    assert call(leaving.address, "/v1/agent/leave", "PUT", timeout=30) == (200, None)
    took = time.monotonic() - started
    sampling.set()
    sampler.join(5)
    assert took >= DRAIN, took
    assert peers(leader) == sorted([leader.rpc, staying.rpc])  # already removed when the answer came
    assert leaving.wait(5) == 0
    assert seen["status"] <= {1, 3} and 3 in seen["status"], seen  # alive, then left; never failed
    eventually(lambda: peers(staying) == sorted([leader.rpc, staying.rpc]), what="2 peers on the follower")
    eventually(lambda: healthy(staying, tolerance=0), what="healthy with 2 servers")
    _, members = leader.get("/v1/agent/members")
    assert {m["Name"]: m["Status"] for m in members}[leaving.name] == 3
    assert "leaving the cluster" in leaving.log()


def test_leader_leaving_hands_over_to_a_follower(cluster: list[Standin]) -> None:
    old = leader_of(cluster)
    rest = followers(cluster)
    started = time.monotonic()
    assert call(old.address, "/v1/agent/leave", "PUT", timeout=30) == (200, None)
    assert time.monotonic() - started >= DRAIN
    assert old.wait(5) == 0
    new = leader_of(rest)
    assert new is not old
    eventually(lambda: peers(new) == sorted(s.rpc for s in rest), what="2 peers")
    eventually(lambda: healthy(rest[0], tolerance=0), what="healthy with 2 servers")


def test_sigterm_stops_a_server_at_once_without_leaving(cluster: list[Standin]) -> None:
    leader = leader_of(cluster)
    victim = followers(cluster)[0]
    eventually(lambda: healthy(leader, tolerance=1), what="autopilot healthy")
    victim.signal(signal.SIGTERM)
    assert victim.wait(3) == 0
    assert "leaving the cluster" not in victim.log()  # a server stops without a leave

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


def test_a_killed_leader_is_replaced_after_an_election_and_rejoins_as_a_follower(
    cluster: list[Standin],
) -> None:
    old = leader_of(cluster)
    rest = followers(cluster)
    eventually(lambda: healthy(old, tolerance=1), what="autopilot healthy")
    old.signal(signal.SIGKILL)
    killed = time.monotonic()
    old.wait(5)
    statuses: set[int] = set()

    def new_leader() -> Standin | None:
        for agent in rest:
            _, members = agent.get("/v1/agent/members")
            statuses.add({m["Name"]: m["Status"] for m in members}[old.name])
        answers = {a.get("/v1/status/leader")[1] for a in rest}
        rpc = answers.pop() if len(answers) == 1 else ""
        return next((a for a in rest if a.rpc == rpc), None)

    new = eventually(new_leader, 10, "a new leader elected by the others")
    assert time.monotonic() - killed >= HEARTBEAT  # raft waits at least a heartbeat timeout
    assert new is not old
    assert statuses <= {1, 4}, statuses  # alive, then failed: a killed leader never shows as left

    def failed_in_autopilot() -> bool:
        status, body = health(rest[0])
        return status == 429 and {s["Name"]: s["SerfStatus"] for s in body["Servers"]}[old.name] == "failed"

    eventually(failed_in_autopilot, what="the old leader failed in autopilot")
    _, body = health(rest[0])
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


def test_acl_default_deny_answers_as_consul_does(agents: Callable[..., Standin], tmp_path: Path) -> None:
    servers = start_cluster(agents, acl=True)
    server = servers[0]
    eventually(lambda: healthy(server, tolerance=1), what="autopilot healthy with the token")
    address = server.address
    # status endpoints need no token in Consul
    assert call(address, "/v1/status/leader")[0] == 200
    assert call(address, "/v1/status/peers")[0] == 200
    # agent:read, operator:read, agent:write, operator:write: 403 with Consul's message, anonymous token
    for path, method, rule in (
        ("/v1/agent/self", "GET", "agent:read"),
        ("/v1/operator/raft/configuration", "GET", "operator:read"),
        ("/v1/operator/autopilot/health", "GET", "operator:read"),
        ("/v1/operator/raft/transfer-leader", "POST", "operator:write"),
        ("/v1/agent/leave", "PUT", "agent:write"),
    ):
        status, text = call(address, path, method)
        assert status == 403 and text.startswith("Permission denied: token with AccessorID"), (path, text)
        assert f"lacks permission '{rule}'" in text, (path, text)
    # members are filtered by node:read: the anonymous token sees none (200, empty)
    assert call(address, "/v1/agent/members") == (200, [])
    # an unknown token: ACL not found
    assert call(address, "/v1/agent/self", token="not-the-token") == (403, "ACL not found")
    # the leave without the token left nothing: still a running voter
    assert server.running() and len(peers(servers[1])) == 3
    # with the management token, in a header or as a bearer token, and through a follower
    assert server.get("/v1/agent/self")[0] == 200
    assert len(server.get("/v1/agent/members")[1]) == 3
    follower = followers(servers)[0]
    assert call(follower.address, "/v1/operator/autopilot/health", token=TOKEN)[0] in (200, 429)
    # a snapshot needs acl:write (management); a follower forwards it to the leader
    nodes = {"follower": f"{follower.address}:8500"}
    with pytest.raises(ConsulError, match="lacks permission 'acl:write'"):
        SnapshotTaker("c", nodes, tmp_path / "snaps", keep=1, timeout=5).take("follower")
    saved = SnapshotTaker("c", nodes, tmp_path / "snaps", keep=1, timeout=5, token=TOKEN).take("follower")
    assert verify_file(saved.path).index == saved.index > 0


def test_raft_multiplier_zero_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(STANDIN), "agent", "-server", f"-data-dir={tmp_path}", "-client", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "STANDIN_RAFT_MULTIPLIER": "0"},
    )
    assert result.returncode == 1 and "STANDIN_RAFT_MULTIPLIER" in result.stderr


def test_the_first_election_waits_a_heartbeat_timeout(agents: Callable[..., Standin]) -> None:
    servers = [agents(f"server{i}", expect=3) for i in range(1, 4)]
    for server in servers:
        server.join = [s.address for s in servers if s is not server]
    for server in servers:
        server.start()
    started = time.monotonic()
    leader_of(servers)
    # bootstrapped at about the start; raft elects no sooner than a heartbeat timeout after that
    assert time.monotonic() - started >= HEARTBEAT * 0.5
