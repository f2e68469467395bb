"""What the console knows of each host between passes (pure).

A pass observes some hosts, plans, and acts; the console shows each host as its last observation left
it: the containers seen, and the drift that remained *after* the pass (the planned changes that did
not succeed). A host the pass did not observe (unreachable, or left alone while it backs off) keeps
its last observation, marked with its time, so the page says "as of" rather than inventing a state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from reconciler.formatting import SYMBOL, format_change
from reconciler.one_pass import PassResult
from reconciler.plan import Action, Kind


@dataclass(frozen=True)
class DriftItem:
    """One planned change on a host and how the pass left it."""

    symbol: str  # plan's: + ~ > - ! =
    kind: str
    container: str
    changes: tuple[str, ...]  # the changed fields, as `plan` prints them
    outcome: str  # pending (not acted on: refused, held, or not yet), failed, skipped, waiting, blocked
    error: str | None = None


@dataclass(frozen=True)
class HostSeen:
    """A host as the last pass that tried it left it."""

    observed_at: datetime | None  # the last time its containers were listed (None: never)
    reachable: bool | None  # None: never tried
    error: str | None = None  # why it could not be reached, when it could not
    containers: Mapping[str, str] | None = None  # our container -> Docker state, as the pass left it
    drift: tuple[DriftItem, ...] | None = None  # None: unknown (never observed)
    tried_at: datetime | None = None  # the last pass that tried it (observed or not)


def remember(previous: Mapping[str, HostSeen], result: PassResult, now: datetime) -> dict[str, HostSeen]:
    """``previous`` updated by one pass: the hosts it observed replaced, the unreachable ones marked
    so (their last listing kept), the ones it left alone unchanged."""
    seen = dict(previous)
    outcomes = _outcomes(result)
    cluster = result.plan.cluster
    for host in result.observed.hosts:
        if host.name in result.plan.deferred:
            continue
        if not host.reachable or host.name in result.plan.unreachable:
            error = result.plan.unreachable.get(host.name) or host.error
            before = seen.get(host.name, HostSeen(None, None))
            seen[host.name] = replace(before, reachable=False, error=error, tried_at=now)
            continue
        containers = {c.name: c.state for c in host.managed if c.managed_by == cluster}
        for action in result.plan.actions:  # what the pass changed: the listing as the pass left it
            if action.host == host.name and outcomes.get(_key(action), ("pending", None))[0] == "succeeded":
                if action.kind is Kind.REMOVE:
                    containers.pop(action.name, None)
                else:
                    containers[action.name] = "running"
        drift = tuple(
            _item(action, *outcomes.get(_key(action), ("pending", None)))
            for action in result.plan.actions
            if action.host == host.name and outcomes.get(_key(action), ("pending", None))[0] != "succeeded"
        )
        seen[host.name] = HostSeen(now, True, None, containers, drift, now)
    return seen


def _key(action: Action) -> tuple[str, str, str]:
    return action.host, action.name, action.kind.value


def _outcomes(result: PassResult) -> dict[tuple[str, str, str], tuple[str, str | None]]:
    """Each applied action's status and error, by host, container and kind."""
    if result.applied is None:
        return {}
    return {_key(r.action): (r.status, r.error) for r in result.applied.results}


def _item(action: Action, outcome: str, error: str | None) -> DriftItem:
    changes = tuple(line for change in action.reasons for line in format_change(change))
    if action.kind is Kind.BLOCKED:
        outcome = "blocked"
    return DriftItem(SYMBOL[action.kind], action.kind.value, action.name, changes, outcome, error)
