"""The rollout gates' decisions (pure): what Consul's agents said -> may a server be disrupted?"""

from __future__ import annotations

from typing import Any

from reconciler.gates import ClusterView, after_removal, after_replacement, before_disruption


def raft(*servers: tuple[str, bool, bool]) -> dict[str, Any]:
    return {
        "Servers": [
            {"ID": f"id-{n}", "Node": n, "Address": f"{n}:8300", "Leader": leader, "Voter": voter}
            for n, leader, voter in servers
        ]
    }


def autopilot(healthy: bool, tolerance: int, *servers: tuple[str, str, bool]) -> dict[str, Any]:
    return {
        "Healthy": healthy,
        "FailureTolerance": tolerance,
        "Servers": [{"Name": n, "SerfStatus": serf, "Healthy": ok} for n, serf, ok in servers],
    }


HEALTHY = ClusterView.from_api(
    "s1:8300",
    raft(("s1", True, True), ("s2", False, True), ("s3", False, True)),
    autopilot(True, 1, ("s1", "alive", True), ("s2", "alive", True), ("s3", "alive", True)),
)
DESIRED = {"s1", "s2", "s3"}


def test_a_healthy_cluster_lets_one_server_go() -> None:
    assert before_disruption(HEALTHY, "s2", DESIRED) is None
    assert HEALTHY.leader_node == "s1"


def test_another_server_down_or_not_a_voter_holds_the_rollout() -> None:
    view = ClusterView.from_api(
        "s1:8300",
        raft(("s1", True, True), ("s2", False, True), ("s3", False, True)),
        autopilot(False, 0, ("s1", "alive", True), ("s2", "alive", True), ("s3", "failed", False)),
    )
    assert before_disruption(view, "s2", DESIRED) == "server s3 is failed"
    # the failed server itself is the only unhealthy one: replacing it is its repair, not a risk
    assert before_disruption(view, "s3", DESIRED) is None
    joining = ClusterView.from_api(
        "s1:8300",
        raft(("s1", True, True), ("s2", False, True), ("s3", False, False)),
        autopilot(False, 0, ("s1", "alive", True), ("s2", "alive", True), ("s3", "alive", False)),
    )
    assert before_disruption(joining, "s1", DESIRED) == "server s3 is not a voter yet"


def members(*nodes: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"Name": n, "Status": status, "Tags": {"role": "consul"}} for n, status in nodes] + [
        {"Name": "client1", "Status": 1, "Tags": {"role": "node"}}
    ]


def test_a_desired_server_missing_from_raft_holds_unless_it_never_started() -> None:
    """Seen against real Consul in the SIGKILL campaign: a controller was killed while the old leader
    (s1) was leaving; Consul's Server.Leave removes a leader from the raft peers first, seconds before
    its gossip says "leaving". The next controller saw two voters, both alive, and replaced s3: two
    servers out at once. A server the gossip pool knows but raft does not now holds the rollout."""
    two_voters = raft(("s2", True, True), ("s3", False, True))
    health = autopilot(True, 0, ("s2", "alive", True), ("s3", "alive", True))
    leaving = ClusterView.from_api("s2:8300", two_voters, health, members(("s1", 1), ("s2", 1), ("s3", 1)))
    assert before_disruption(leaving, "s3", DESIRED) == (
        "server s1 is not in the raft peers (joining, or leaving)"
    )
    later = ClusterView.from_api("s2:8300", two_voters, health, members(("s1", 2), ("s2", 1), ("s3", 1)))
    assert before_disruption(later, "s3", DESIRED) == "server s1 is leaving"
    # never started (scale-up in progress, its container not yet created): nothing to wait for
    absent = ClusterView.from_api("s2:8300", two_voters, health, members(("s2", 1), ("s3", 1)))
    assert before_disruption(absent, "s3", DESIRED) is None
    # left, but its agent still drains before it exits (or it stays away): still holds; once its
    # container is down, its repair comes first and needs no gate
    left = ClusterView.from_api("s2:8300", two_voters, health, members(("s1", 3), ("s2", 1), ("s3", 1)))
    assert before_disruption(left, "s3", DESIRED) == (
        "server s1 has left the cluster (its agent may still be shutting down)"
    )
    assert leaving.members == {"s1": "alive", "s2": "alive", "s3": "alive"}  # clients are not servers


def test_no_leader_with_peers_is_recovery_required_never_a_bootstrap() -> None:
    view = ClusterView(leader="", peers_known=True)
    assert "recovery required" in (before_disruption(view, "s1", DESIRED) or "")
    assert before_disruption(ClusterView(leader=""), "s1", DESIRED) == "the cluster has no leader"
    assert "cannot see" in (before_disruption(ClusterView(error="refused"), "s1", DESIRED) or "")


def test_after_replacement_needs_voter_leader_and_health() -> None:
    assert after_replacement(HEALTHY, "s2") is None
    new = ClusterView.from_api(
        "s1:8300",
        raft(("s1", True, True), ("s2", False, False), ("s3", False, True)),
        autopilot(False, 0, ("s1", "alive", True), ("s2", "alive", False), ("s3", "alive", True)),
    )
    assert after_replacement(new, "s2") == "server s2 is not a voter yet"
    assert after_replacement(ClusterView(leader=""), "s2") == "no leader yet"
    # back as a voter, but autopilot holds another server unhealthy: the message names it
    lagging = ClusterView.from_api(
        "s1:8300",
        raft(("s1", True, True), ("s2", False, True), ("s3", False, True), ("s4", False, False)),
        autopilot(
            False,
            1,
            ("s1", "alive", True),
            ("s2", "alive", True),
            ("s3", "alive", True),
            ("s4", "alive", False),
        ),
    )
    assert after_replacement(lagging, "s2") == (
        "autopilot does not call the cluster healthy yet (failure tolerance 1; unhealthy: s4 (not a voter))"
    )
    # s4 is no server of the topology: a stranger (found in a whole-suite run: a server of an earlier
    # test, left running on another host, rejoined by Serf's reconnect); the message says what to do
    stranger = after_replacement(lagging, "s2", ["s1", "s2", "s3"]) or ""
    assert "unhealthy: s4 (not a voter; not in the topology); a server not in the topology" in stranger
    assert "remove-peer" in stranger and "consul.encrypt" in stranger
    assert "not in the topology" in (before_disruption(lagging, "s3", ["s1", "s2", "s3"]) or "")
    assert "not in the topology" in (after_removal(lagging, "s5", ["s1", "s2", "s3"]) or "")


def test_after_removal_needs_the_server_gone_from_raft_and_health() -> None:
    assert after_removal(HEALTHY, "s3") == "server s3 is still in the raft configuration"
    gone = ClusterView.from_api(
        "s1:8300",
        raft(("s1", True, True), ("s2", False, True)),
        autopilot(True, 0, ("s1", "alive", True), ("s2", "alive", True)),
    )
    assert after_removal(gone, "s3") is None


def test_the_only_unhealthy_server_may_be_replaced_but_not_while_another_is_unhealthy() -> None:
    crashlooping = ClusterView.from_api(
        "s1:8300",
        raft(("s1", True, True), ("s2", False, True), ("s3", False, True)),
        autopilot(False, 0, ("s1", "alive", True), ("s2", "alive", True), ("s3", "alive", False)),
    )
    assert before_disruption(crashlooping, "s3", DESIRED) is None
    assert before_disruption(crashlooping, "s2", DESIRED) == (
        "autopilot reports the cluster unhealthy, failure tolerance 0 (unhealthy: s3)"
    )
