"""reconciler.execute.Executor.apply runs Plan.phases as the executor used to order a plan itself.

No Docker: the two ways an action is carried out (``_run_one``, and ``_run_server`` for a gated server
disruption) are replaced by records, and the gates only name a leader. The reference is the old
executor's grouping and sorting, kept in tests/unit/test_plan.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.execute import ActionResult, Executor
from reconciler.gates import ClusterView, RaftServer
from reconciler.plan import Action, Plan
from tests.unit.test_plan import CLUSTER, reference_execution_order, representative_plans


class LeaderOnly:
    """Gates that only answer who leads (counting how often they are asked)."""

    def __init__(self, leader: str | None) -> None:
        self.leader = leader
        self.views = 0

    def view(self, exclude: str | None = None) -> ClusterView:
        self.views += 1
        if self.leader is None:
            return ClusterView()
        return ClusterView(leader="10.0.0.9:8300", servers=(RaftServer("id", self.leader, "", True, True),))


class Recording(Executor):
    """Carries out nothing: each result says which path the action took."""

    def _run_one(self, action: Action) -> ActionResult:
        return ActionResult(action, "succeeded", error="one")

    def _run_server(self, action: Action) -> ActionResult:
        return ActionResult(action, "succeeded", error="server")


def reference_results(plan: Plan, leader: str | None, gated: bool) -> tuple[list[tuple[Action, str]], int]:
    """The results the old Executor.apply returned in order (parallel ones by host, in the order hosts
    first appear, as _run_parallel collects them), and how often it asked for the leader."""
    results: list[tuple[Action, str]] = []
    views = 0
    for parallel, serial in reference_execution_order(plan, leader, gated):
        by_host: dict[str, list[Action]] = {}
        for action in parallel:
            by_host.setdefault(action.host, []).append(action)
        results += [(a, "one") for actions in by_host.values() for a in actions]
        results += [(a, "server" if gated else "one") for a in serial]
        views += bool(serial and gated)
    return results, views


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("leader", ["server1", "server2", "server3", None])
def test_apply_runs_the_phases_in_the_order_the_executor_used_to_decide(
    leader: str | None, gated: bool
) -> None:
    for plan in representative_plans():
        gates = LeaderOnly(leader)
        none: Any = None  # no engines and no audit log: nothing is carried out
        stand_in: Any = gates if gated else None
        executor = Recording(none, {}, none, 1, CLUSTER, gates=stand_in)
        applied = executor.apply(plan)
        expected, views = reference_results(plan, leader, gated)
        assert [(r.action, r.error) for r in applied.results] == expected
        assert gates.views == views
