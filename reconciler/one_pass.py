"""One pass: desired state -> observe -> plan -> (audit, execute).

The glue between the pure core and the shell. Used by the CLI's ``plan`` and
``apply`` and by the controller loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from desired_state.load import Loaded
from desired_state.model import Topology
from desired_state.secrets import check_secrets
from desired_state.spec import DesiredFleet, Endpoint
from reconciler.actual import ObservedFleet
from reconciler.consul_gates import ConsulGates
from reconciler.consul_settings import ConsulError, TLSClient, resolve_token
from reconciler.engines import Connections
from reconciler.execute import STOPPED_ACTING, ApplyResult, ExecOptions, Executor, action_record
from reconciler.gates import GateLook
from reconciler.observe import Concurrency, observe_fleet
from reconciler.pauses import AuditPauses, RolloutPauses
from reconciler.plan import DEFAULT_MAX_REMOVALS, Kind, Plan, make_plan
from reconciler.plan import repairs_only as only_repairs
from reconciler.scope import FULL, Scope
from reconciler.snapshots import SnapshotTaker, resolve_directory
from reconciler.store import ActionRecord, AuditLog
from reconciler.store.rows import SEQ_PASS_NOTES
from reconciler.versions import Version, check_versions, image_version

log = logging.getLogger("consul_reconciler.pass")


# The observe rows: a host that stops answering, and one that answers again (audited once each)
NOT_OBSERVED = "host could not be observed; nothing done on it"
ANSWERS_AGAIN = "host answers again; it was unreachable since an earlier pass"


@dataclass
class PassOptions:
    max_removals: int = DEFAULT_MAX_REMOVALS
    adopt: tuple[str, ...] = ()
    exec: ExecOptions = field(default_factory=ExecOptions)
    consul_token: str | None = None  # given explicitly (a token file); wins over $CONSUL_HTTP_TOKEN
    consul_ca: str | None = None  # given explicitly (--consul-ca); wins over $CONSUL_CACERT


@dataclass
class PassResult:
    plan: Plan
    observed: ObservedFleet
    run_id: int | None = None
    applied: ApplyResult | None = None
    refused: str | None = None

    @property
    def ok(self) -> bool:
        """Converged: nothing refused, failed, unreachable or blocked."""
        if self.refused or self.plan.unreachable:
            return False
        if any(a.kind is Kind.BLOCKED for a in self.plan.actions):
            return False
        return self.applied is None or not (self.applied.failed or self.applied.waiting)

    interrupted: bool = False
    troubles: frozenset[str] = frozenset()  # hosts unreachable when last tried and not observed since
    #   (whether tried again or left alone while backing off): the next pass's known_troubles
    scope: Scope = FULL  # the hosts the pass looked at (reconciler.scope)

    def summary(self) -> dict[str, object]:
        """The run's summary in the audit log: what was planned and how the actions ended."""
        applied = self.applied or ApplyResult()
        summary: dict[str, object] = {
            "planned": self.plan.counts(),
            "succeeded": applied.count("succeeded"),
            "failed": applied.count("failed"),
            "skipped": applied.count("skipped"),
            "unreachable": sorted(self.plan.unreachable),
        }
        if self.acknowledged():
            summary["acknowledged"] = self.acknowledged()
        if applied.snapshot is not None:
            summary["snapshot"] = {"path": str(applied.snapshot.path), "raft_index": applied.snapshot.index}
        if applied.snapshot_problem is not None:
            summary["snapshot_problem"] = applied.snapshot_problem
        return summary

    def acknowledged(self) -> list[str]:
        """The dangerous changes this pass made because its document acknowledged them."""
        return [d.acknowledgement for d in self.plan.dangers if d.acknowledged]

    def error(self) -> str | None:
        """The run's error in the audit log: every failed action's, then every unreachable host's."""
        problems = [r.error or "" for r in (self.applied.failed if self.applied else [])]
        problems += [f"host {h}: {e}" for h, e in sorted(self.plan.unreachable.items())]
        return "; ".join(problems) or None

    @property
    def status(self) -> str:
        if self.refused:
            return "refused"
        if self.interrupted:
            return "interrupted"
        if self.applied is not None and self.applied.waiting and not self.applied.failed:
            return "waiting"
        return "succeeded" if self.ok else "failed"


def controller_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def endpoints_to_observe(
    desired: DesiredFleet, audit: AuditLog | None, known: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Endpoint]:
    """The desired hosts, plus hosts we applied to before that left the topology
    (so their containers can be removed). ``known``: the audit log's known hosts, when already read."""
    endpoints = {h.name: h.endpoint for h in desired.hosts}
    if known is None and audit is not None:
        known = audit.state.known_hosts(desired.cluster)
    if known is not None:
        for host, data in known.items():
            if host not in endpoints:
                try:
                    endpoints[host] = Endpoint.from_dict(dict(data))
                except (KeyError, TypeError, ValueError):
                    log.warning("known host %s has an unreadable endpoint record; ignoring it", host)
    return endpoints


def compute_plan(
    loaded: Loaded,
    connections: Connections,
    audit: AuditLog | None,
    options: PassOptions,
    deferred: Mapping[str, str] | None = None,
    scope: Scope = FULL,
    concurrency: Concurrency | None = None,
    known: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[DesiredFleet, ObservedFleet, Plan]:
    """Observe and plan. ``scope``: the hosts this pass looks at (reconciler.scope); the others are
    neither observed nor planned. ``concurrency``: how many hosts are observed at once, adapted by what
    this observation took (reconciler.observe.Concurrency)."""
    desired = loaded.fleet
    deferred = dict(deferred or {})
    # from the whole document: a host out of scope has not left the topology
    endpoints = {
        h: e
        for h, e in endpoints_to_observe(desired, audit, known).items()
        if h not in deferred and scope.covers(h)
    }
    if not scope.full:
        desired = replace(desired, hosts=tuple(h for h in desired.hosts if scope.covers(h.name)))
    wanted = {h.name: [s.name for s in h.specs] for h in desired.hosts}
    adopted = audit.state.adoptions(desired.cluster) if audit is not None else {}
    ids = frozenset(a.container_id for a in adopted.values())
    observed = observe_fleet(connections, endpoints, wanted, adopted_ids=ids, concurrency=concurrency)
    plan = make_plan(
        desired,
        observed,
        max_removals=options.max_removals,
        adopt=options.adopt,
        deferred=deferred,
        adopted=adopted,
    )
    plan = check_versions(plan, allow_downgrade=loaded.topology.rollout.allow_downgrade)
    return desired, observed, plan


def run_pass(
    loaded: Loaded,
    *,
    source: str,
    connections: Connections,
    audit: AuditLog,
    options: PassOptions,
    trigger: str = "cli",
    environ: Mapping[str, str] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    deferred: Mapping[str, str] | None = None,
    controller: str | None = None,
    lock: tuple[str | None, int | None] | None = None,
    confirm_leadership: Callable[[], str | None] = lambda: None,
    leadership_lost: Callable[[], str | None] = lambda: None,
    repairs_only: bool = False,
    progress: Callable[[str], None] = lambda what: None,
    pauses: RolloutPauses | None = None,
    known_troubles: frozenset[str] = frozenset(),
    on_plan: Callable[[Plan], None] = lambda plan: None,
    gate_watch: Callable[[GateLook], None] = lambda look: None,
    scope: Scope = FULL,
    concurrency: Concurrency | None = None,
    known_hosts: Mapping[str, Mapping[str, Any]] | None = None,
    may_act: Callable[[str], str | None] = lambda host: None,
) -> PassResult:
    """One pass. ``repairs_only``: no leader can be known, so only what needs none is done (missing
    containers created, stopped ones started; see plan.repairs_only). ``leadership_lost`` is asked
    right before every disruptive step and ``confirm_leadership`` (Consul) before a server is
    disrupted: a reason stops the action there.

    ``known_troubles``: the hosts that were unreachable when last tried and have not been observed
    since (the previous pass's ``troubles``). A host is audited when it becomes unreachable and when it
    answers again, not once a pass while it stays away, nor again when another host's trouble makes a
    pass worth a run; a pass with nothing to do and nothing new writes no run.

    ``on_plan`` is told the plan before anything is done, ``gate_watch`` every look of a health gate
    (what the console shows of a pass in progress). ``may_act(host)`` is asked right before every action
    on a host (sharding: is it still this controller's?).

    ``scope``: the hosts this pass looks at (reconciler.scope); the others are left as they are.
    ``known_hosts``: the audit log's known hosts of the cluster, when the caller read them already."""
    if known_hosts is None:
        known_hosts = audit.state.known_hosts(loaded.fleet.cluster)
    desired, observed, plan = compute_plan(
        loaded, connections, audit, options, deferred, scope, concurrency, known_hosts
    )
    if repairs_only:
        plan = only_repairs(plan)
    on_plan(plan)
    cluster = desired.cluster
    seen = {h.name for h in observed.hosts if h.reachable}
    # a host left alone while it backs off keeps the state it had when last tried
    troubles = (known_troubles - seen) | frozenset(plan.unreachable)
    answering = sorted(known_troubles & seen)
    went_away = {host: error for host, error in plan.unreachable.items() if host not in known_troubles}
    if not plan.actions and plan.refused is None and not went_away and not answering:
        # Nothing to do and nothing new wrong: no run row (a controller's resync would otherwise write
        # one every interval for ever). Remember the hosts on first sight only.
        audit.state.remember_hosts(cluster, _new_endpoints(desired, seen, known_hosts))
        return PassResult(plan, observed, None, ApplyResult(), troubles=troubles, scope=scope)
    run_id = audit.start_run(
        cluster_id=cluster,
        trigger=trigger,
        source=source,
        digest=loaded.digest,
        controller=controller or controller_identity(),
        lock_holder=lock[0] if lock else None,
        lock_index=lock[1] if lock else None,
    )
    seq = SEQ_PASS_NOTES  # rows about the pass itself (unreachable, blocked) sort after the actions
    observations: list[tuple[str, str, str, str | None]] = [
        (host, "succeeded", ANSWERS_AGAIN, None) for host in answering
    ]
    observations += [(host, "failed", NOT_OBSERVED, error) for host, error in sorted(went_away.items())]
    for host, status, message, error in observations:
        seq += 1
        record = ActionRecord(seq=seq, host=host, kind="observe", reason=[{"message": message}])
        audit.record_action(run_id, record, status=status, error=error)
    for action in plan.actions:
        if action.kind is Kind.BLOCKED:
            seq += 1
            # A blocked name changes nothing, so its row names no spec hashes (as it never has)
            record = replace(action_record(action, seq), old_hash=None, new_hash=None)
            audit.record_action(
                run_id, record, status="skipped", error="blocked: name held by a container that is not ours"
            )
    refused = plan.refused or (
        _secret_problems(loaded, environ or options.exec.environ) if plan.needs_secrets else None
    )
    try:
        tls = TLSClient.resolve(options.consul_ca, environ)
    except ConsulError as exc:
        tls, refused = TLSClient(), refused or f"the controller's TLS settings for Consul: {exc}"
    if refused:
        audit.finish_run(run_id, status="refused", error=refused, summary=plan.counts())
        log.error("pass refused: %s", refused)
        return PassResult(plan, observed, run_id, None, refused, troubles=troubles, scope=scope)

    for danger in plan.dangers:
        if danger.acknowledged:
            log.warning("going ahead with an acknowledged dangerous change: %s", danger)
    # before acting: a host this pass creates containers on is known even if the process dies next
    audit.state.remember_hosts(cluster, _new_endpoints(desired, seen, known_hosts))
    endpoints = {h.name: h.endpoint for h in observed.hosts}
    rollout = loaded.topology.rollout
    exec_options = replace(options.exec, max_parallel=rollout.max_parallel)
    gates = hold = snapshots = None
    store = pauses or AuditPauses(audit)
    if rollout.gates:
        agents = server_agents(desired, observed)
        token = resolve_token(options.consul_token, environ)
        gates = ConsulGates(
            agents,
            deadline=rollout.deadline,
            stabilization=rollout.stabilization,
            agent_timeout=rollout.agent_timeout,
            leave_timeout=rollout.leave_timeout,
            token=token,
            tls=tls,
            progress=progress,
            watch=gate_watch,
        )
        hold = _pause_in_force(store, cluster, loaded.digest)
        hosts = server_hosts(desired, observed)
        snapshots = snapshot_taker(loaded.topology, agents, hosts, token, tls, audit.url, progress)
    executor = Executor(
        connections,
        endpoints,
        audit,
        run_id,
        cluster,
        exec_options,
        should_stop,
        gates=gates,
        desired_servers=frozenset(h.node_name for h in loaded.topology.servers),
        server_hold=hold,
        on_pause=lambda reason: store.set(cluster, reason, loaded.digest),
        confirm_leadership=confirm_leadership,
        leadership_lost=leadership_lost,
        server_versions=running_server_versions(observed),
        snapshots=snapshots,
        may_act=may_act,
    )
    try:
        applied = executor.apply(plan)
    except Exception as exc:
        # Most likely the audit database failed after a Docker action: the outcomes already known are
        # kept by the audit log and written when it is back; so is this run's end.
        with contextlib.suppress(Exception):
            audit.finish_run(run_id, status="failed", error=f"the pass stopped: {type(exc).__name__}: {exc}")
        raise
    for host in plan.hosts_to_forget(r.action.host for r in applied.results if r.status != "succeeded"):
        audit.state.forget_host(cluster, host)
    result = PassResult(plan, observed, run_id, applied, troubles=troubles, scope=scope)
    result.interrupted = should_stop() and any(
        r.status == "skipped" and r.error == STOPPED_ACTING for r in applied.results
    )
    audit.finish_run(run_id, status=result.status, summary=result.summary(), error=result.error())
    return result


def _new_endpoints(
    desired: DesiredFleet, seen: Collection[str], known: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The endpoints of the desired hosts that answered and are not known with that endpoint yet: what
    the known hosts must take in (a pass writes nothing for the hosts already known as they are)."""
    found: dict[str, dict[str, Any]] = {}
    for wanted in desired.hosts:
        if wanted.name in seen:
            endpoint = wanted.endpoint.to_dict()
            if known.get(wanted.name) != endpoint:
                found[wanted.name] = endpoint
    return found


def running_server_versions(observed: ObservedFleet) -> dict[str, Version | None]:
    """node -> the Consul version (of its image's tag) each running server agent runs."""
    return {
        c.node: image_version(c.image)
        for seen in observed.hosts
        for c in seen.managed
        if c.role == "server" and c.node and c.state == "running"
    }


def server_agents(desired: DesiredFleet, observed: ObservedFleet) -> dict[str, str]:
    """node -> HTTP address of every server agent, desired or still running."""
    agents: dict[str, str] = {}
    for seen in observed.hosts:
        for container in seen.managed:
            if container.role == "server" and container.node and container.agent_http:
                agents[container.node] = container.agent_http
    for host in desired.hosts:
        for spec in host.specs:
            if spec.role == "server" and spec.agent_http:
                agents[spec.node] = spec.agent_http
    return agents


def server_hosts(desired: DesiredFleet, observed: ObservedFleet) -> dict[str, str]:
    """node -> host of every server agent, desired or still running."""
    hosts = {
        c.node: seen.name for seen in observed.hosts for c in seen.managed if c.role == "server" and c.node
    }
    hosts |= {spec.node: host.name for host in desired.hosts for spec in host.specs if spec.role == "server"}
    return hosts


def snapshot_taker(
    topology: Topology,
    agents: Mapping[str, str],
    hosts: Mapping[str, str],
    token: str | None,
    tls: TLSClient,
    db_url: str,
    progress: Callable[[str], None] = lambda what: None,
) -> SnapshotTaker | None:
    """What takes the snapshot before the first server change of a pass (``snapshots`` in the topology;
    None when they are off). Its folder: ``snapshots.dir``, else beside the audit database."""
    settings = topology.snapshots
    if not settings.enabled:
        return None
    folder = resolve_directory(settings.dir, db_url)
    return SnapshotTaker(
        topology.cluster,
        agents,
        folder,
        keep=settings.keep,
        timeout=settings.timeout,
        token=token,
        tls=tls,
        hosts=hosts,
        progress=progress,
    )


def _pause_in_force(pauses: RolloutPauses, cluster: str, digest: str) -> str | None:
    """A paused rollout holds servers until `resume`, or until the desired document changes."""
    pause = pauses.get(cluster)
    if pause is None:
        return None
    reason, paused_digest, since = pause
    if paused_digest != digest:
        pauses.clear(cluster)
        log.info("the desired state changed since the rollout paused; resuming")
        return None
    when = since.isoformat(timespec="seconds")
    return f"{reason} (paused since {when}; `consul-reconciler resume` when fixed)"


def _secret_problems(loaded: Loaded, environ: Mapping[str, str] | None) -> str | None:
    issues = check_secrets(loaded.topology, environ)
    if not issues:
        return None
    return "secret references do not resolve, nothing done: " + "; ".join(str(i) for i in issues)
