"""What the controller tells the outside: /healthz and /readyz, and each host's state, in the audit
database and (with a Consul source) as status documents in Consul KV."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from desired_state.load import Loaded
from reconciler.assess import Assessment
from reconciler.backoff import HOST_STATES, HostBackoff
from reconciler.consul_api import ConsulError
from reconciler.formatting import host_report
from reconciler.leader import LeaderLock
from reconciler.loop import ReconcileLoop
from reconciler.metrics import Metrics
from reconciler.one_pass import PassResult
from reconciler.sources import ConsulSource, FileSource
from reconciler.store import AuditLog, HostState

if TYPE_CHECKING:
    from reconciler.controller import Controller
    from reconciler.sharding import Shard

# the controller's logger: operators filter on it
log = logging.getLogger("consul_reconciler.controller")


class StatusWriter:
    def __init__(self, audit: AuditLog, source: FileSource | ConsulSource, identity: str) -> None:
        self.audit = audit
        self.source = source
        self.identity = identity
        self.written: dict[str, str] = {}  # status documents as last written, by key
        self.states: dict[tuple[str, str], tuple[object, ...]] = {}  # (cluster, host) -> state as written

    def write_host_states(
        self,
        loaded: Loaded,
        result: PassResult,
        drift: dict[str, int],
        backoff: Mapping[str, HostBackoff],
        only: Iterable[str] | None = None,
    ) -> None:
        """Each host's state (ok, backoff, unreachable, degraded) in the audit database; ``only``: the
        hosts this controller answers for (sharded: its own), else every host."""
        now_wall = datetime.now(UTC)
        now = time.monotonic()
        states: list[HostState] = []
        hosts = {h.name for h in loaded.topology.hosts} | {h.name for h in result.observed.hosts}
        if only is not None:
            hosts = set(only) | {h.name for h in result.observed.hosts}
        for host in sorted(hosts):
            b = backoff.get(host)
            if b is not None and b.failures:
                retry_at = now_wall + timedelta(seconds=max(0.0, b.retry_at - now))
                states.append(
                    HostState(host, b.state, b.failures, retry_at, drift.get(host, 0), b.last_error)
                )
            else:
                states.append(HostState(host, "ok", 0, None, drift.get(host, 0), None))
        # only what changed (at thousands of hosts, a row each per pass is most of a scoped pass's cost);
        # a retry time within a second of the one written is the same time (monotonic -> wall clock)
        cluster = loaded.topology.cluster
        changed = [s for s in states if self.states.get((cluster, s.host)) != _written_as(s)]
        self.audit.state.set_host_states(cluster, changed, touch=True)
        self.states.update({(cluster, s.host): _written_as(s) for s in changed})

    def write_status(self, loaded: Loaded, result: PassResult, status_prefix: str | None) -> None:
        """Per-host status documents in Consul KV, readable in Consul's own UI (written on change)."""
        if not isinstance(self.source, ConsulSource) or not status_prefix:
            return
        prefix = f"{status_prefix.rstrip('/')}/{loaded.topology.cluster}"
        states = self.audit.state.host_states(loaded.topology.cluster)
        consul = self.source.consul
        for host in loaded.fleet.hosts:
            if not result.scope.covers(host.name):
                continue  # not looked at by this pass: its document stays as written
            seen = result.observed.host(host.name)
            state = states.get(host.name)
            report = host_report(loaded.topology.cluster, host.name, result.plan, seen)
            doc = {
                "host": host.name,
                "desired": {s.name: s.spec_hash() for s in host.specs},
                "observed": report["observed"],
                "reachable": report["reachable"],
                "drift": report["drift"],
                "state": state.state if state else "unknown",
                "failures": state.failures if state else 0,
                "detail": state.detail if state else None,
                "desired_digest": loaded.digest,
                "controller": self.identity,
            }
            text = json.dumps(doc, sort_keys=True)
            key = f"{prefix}/{host.name}"
            if self.written.get(key) == text:
                continue
            try:
                consul.put(key, text.encode())
                self.written[key] = text
            except ConsulError as exc:
                log.warning("could not write status %s: %s", key, exc)
                return


def _written_as(state: HostState) -> tuple[object, ...]:
    retry = None if state.retry_at is None else round(state.retry_at.timestamp())
    return (state.state, state.failures, retry, state.drift, state.detail)


def healthz(
    loop: ReconcileLoop[Any], lock: LeaderLock | None, limit: float
) -> tuple[bool, dict[str, object]]:
    """Alive and making progress, or legitimately waiting: a pass that moves on or waits on a gate
    (each look at the cluster counts), passes that end, and a leader lock loop that goes round."""
    now = time.monotonic()
    alive = loop.liveness()
    running_since, last_end = alive.running_since, alive.last_end
    progress_at, doing = alive.progress_at, alive.doing
    if running_since is not None and now - progress_at > limit:
        return False, {
            "reason": f"a pass has made no progress for {now - progress_at:.0f}s (limit {limit:.0f}s), "
            f"running for {now - running_since:.0f}s; last: {doing}"
        }
    reference = last_end if last_end is not None else alive.started
    if running_since is None and now - reference > limit:
        return False, {"reason": f"no pass ended in the last {now - reference:.0f}s (limit {limit:.0f}s)"}
    if lock is not None and lock.ident is not None:  # started
        quiet = time.monotonic() - lock.last_beat
        lock_limit = max(limit, lock.longest_round())
        if quiet > lock_limit or not lock.is_alive():
            return False, {
                "reason": f"the leader lock loop has not gone round for {quiet:.0f}s "
                f"(limit {lock_limit:.0f}s)"
            }
    ended_ago = None if last_end is None else round(now - last_end, 3)
    detail: dict[str, object] = {"last_pass_ended_ago": ended_ago}
    if running_since is not None:
        detail["doing"] = doing
    return True, detail


def readyz(last_valid: Loaded | None, last_end: float | None) -> tuple[bool, dict[str, object]]:
    if last_valid is None:
        return False, {"reason": "no valid desired state yet"}
    if last_end is None:
        return False, {"reason": "the first pass has not finished"}
    return True, {"digest": last_valid.digest}


def status_document(ctl: Controller) -> dict[str, object]:
    """The body of /status."""
    now = time.monotonic()
    desired = ctl.desired
    return {
        "controller": ctl.identity,
        "source": ctl.source.describe(),
        "desired_digest": desired.last_valid.digest if desired.last_valid else None,
        "desired_state_valid": desired.rejected_digest is None,
        "source_error": desired.source_error,
        "enforcing": (
            None
            if desired.last_valid is None
            else {
                "digest": desired.last_valid.digest,
                "from": "kept document" if desired.enforcing_kept else "source",
                "why": desired.source_error if desired.rejected_digest else None,
            }
        ),
        "leader": None if ctl.lock is None else ctl.lock.is_leader(),
        "rollout_paused": ctl._rollout_pause,
        "pass_error": ctl.loop.error,
        "lock_index": None if ctl.lock is None else ctl.lock.fencing()[1],
        "shard": None if ctl.shard is None else shard_document(ctl.shard),
        "passes": ctl.passes_run,
        "last_run": ctl._last_result.run_id if ctl._last_result else None,
        "last_status": ctl._last_result.status if ctl._last_result else None,
        "hosts": {
            h: {
                "failures": s.failures,
                "degraded": s.degraded,
                "error": s.last_error,
                "retry_in": round(max(0.0, s.retry_at - now), 3),
            }
            for h, s in ctl.history.hosts.items()  # the pass thread replaces it whole, never changes it
            if s.failures
        },
    }


def shard_document(shard: Shard) -> dict[str, object]:
    """This controller's share of the hosts (run --shard): the members it sees, the hosts it acts on,
    and every host's owner as it last decided."""
    session, index = shard.membership.fencing()
    _, _, view = shard.membership.current()
    leader = view.leader() if view is not None else None
    return {
        "identity": shard.identity,
        "session": session,
        "fencing_index": index,
        "members": view.identities() if view is not None else [],
        "leader": leader.identity if leader is not None else None,
        "acting": sorted(shard.acting()),
        "owners": shard.owners(),
        "lapsed": shard.lapsed(),
    }


def count_pass(metrics: Metrics, result: PassResult, duration: float) -> dict[str, int]:
    """A pass's outcome, duration and actions, and each host's drift (planned changes); returns the drift."""
    metrics.passes.labels(result.status).inc()
    metrics.pass_duration.observe(duration)
    for r in result.applied.results if result.applied else []:
        metrics.actions.labels(r.action.kind.value, r.status).inc()
    drift: dict[str, int] = {}
    for action in result.plan.actions:
        drift[action.host] = drift.get(action.host, 0) + 1
    # Only the hosts this pass looked at have a drift; the others' is unknown: absent, never 0. A pass
    # scoped to some hosts (reconciler.scope) leaves the others' as the last pass that looked saw it.
    seen = {h.name for h in result.observed.hosts if h.reachable} - set(result.plan.unreachable)
    for host in sorted(seen):
        metrics.drift.labels(host).set(drift.get(host, 0))
    gone = {h for h in metrics.drift_shown - seen if result.scope.covers(h)}
    for host in sorted(gone):
        metrics.drift.remove(host)
    metrics.drift_shown = (metrics.drift_shown | seen) - gone
    return drift


def count_hosts(
    metrics: Metrics,
    result: PassResult,
    verdict: Assessment,
    desired: Iterable[str],
    drift_elsewhere: bool = False,
) -> None:
    """Each host's state (one of HOST_STATES, as 1 on its state's series and 0 on the others) and the
    counts by state: a host stays unreachable while it backs off, whether or not this pass tried it.
    The time of a pass that left no host failing (``drift_elsewhere``: hosts this pass did not look
    at still drift as last seen, so it did not leave the fleet converged)."""
    history = verdict.history.hosts
    hosts = set(desired) | {h for h, s in history.items() if s.failures}
    states = {host: history[host].state if host in history else "ok" for host in hosts}
    shown = metrics.host_states_shown  # what the series say now: only changes are written
    for host, state in states.items():
        if shown.get(host) != state:
            for name in HOST_STATES:
                metrics.host_state.labels(host, name).set(1 if name == state else 0)
            shown[host] = state
    for host in set(shown) - hosts:
        for name in HOST_STATES:
            metrics.host_state.remove(host, name)
        del shown[host]
    metrics.hosts_unreachable.set(sum(1 for s in states.values() if s == "unreachable"))
    metrics.hosts_degraded.set(sum(1 for s in states.values() if s == "degraded"))
    metrics.hosts_backoff.set(len(verdict.waiting))
    if result.ok and not verdict.waiting and not drift_elsewhere:
        metrics.last_success.set(time.time())
