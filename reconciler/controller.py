"""The long-running controller: passes for ever, level-triggered.

- An APScheduler interval job (the periodic full resync, with jitter) and the
  triggers (desired-state file changed, a Docker event on one of our containers,
  an engine back after an outage, a host's backoff expired) all only *ask* for a
  pass; one pass thread runs them, so two passes never overlap and a burst of
  requests becomes one pass.
- A pass acts only on what it observes then (reconciler.one_pass.run_pass).
- Per-host exponential backoff after failures; crash-loop detection marks a host
  degraded instead of recreating a container in a tight loop.
- Bad or missing desired state never tears anything down: the last valid
  document stays enforced and the rejection is audited (once per document).
- SIGTERM/SIGINT: the action in flight finishes, no new one starts, the run is
  recorded as interrupted, exit 0.
- Start-up: rows a killed controller left "started" become "interrupted", and the
  first pass repairs what they left (it is level-triggered: the plan sees it).

The request queue, timed requests, signals and the guarded pass are the generic
reconciler.loop; what follows a pass (backoff, crash loops, retries) is decided by
reconciler.assess and applied here; probes and status write-back are in
reconciler.reporting, the Docker event streams in reconciler.watchers, which document is enforced in
reconciler.desired.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from desired_state.load import Loaded
from reconciler import __version__, reporting
from reconciler.assess import History, Rules, assess, summarize
from reconciler.backoff import BackoffPolicy
from reconciler.console.backend import ControllerBackend
from reconciler.console.feed import ConsoleFeed
from reconciler.console.web import Console
from reconciler.consul_api import Consul, ConsulError
from reconciler.desired import DesiredState
from reconciler.engines import Connections
from reconciler.formatting import changes_line
from reconciler.httpserver import StatusServer
from reconciler.leader import LeaderLock, lock_key_for
from reconciler.loop import ReconcileLoop, Requeue
from reconciler.membership import Membership
from reconciler.metrics import Metrics
from reconciler.observe import Concurrency
from reconciler.one_pass import PassOptions, PassResult, controller_identity, endpoints_to_observe, run_pass
from reconciler.pauses import pauses_for
from reconciler.plan import Plan
from reconciler.reporting import StatusWriter
from reconciler.scope import FULL, RESYNC, Scope, pass_scope, slice_count
from reconciler.sdnotify import Notifier
from reconciler.sharding import Shard
from reconciler.sources import ConsulSource, FileSource, Watcher
from reconciler.store import ActionRecord, AuditLog
from reconciler.store.rows import SEQ_CONTROLLER_NOTES
from reconciler.triggers import PassRequests, Request
from reconciler.watchers import EventWatchers

log = logging.getLogger("consul_reconciler.controller")


@dataclass
class ControllerOptions:
    interval: float = 30.0
    jitter: float = 0.1  # fraction of the interval
    http: str | None = "127.0.0.1:9321"
    http_token: str | None = None
    health_factor: float = 3.0  # /healthz fails when no pass ended within this many intervals
    prune_after: timedelta | None = None
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    crashloop_attempts: int = 3
    crashloop_window: float = 300.0
    watch_events: bool = True
    watch_file: bool = True  # watch the source (file or KV key) for changes
    leader_election: bool = True  # with a Consul source: only the holder of the lock acts
    lock_key: str | None = None  # default: the source key + ".leader"
    lock_ttl: float = 15.0
    lock_delay: float = 15.0
    shard: bool = False  # with a Consul source and leader election: share the hosts with the other members
    status_prefix: str | None = "consul-reconciler/status"  # with a Consul source: per-host status docs
    passes: PassOptions = field(default_factory=PassOptions)


class Controller:
    def __init__(
        self,
        source: FileSource | ConsulSource,
        audit: AuditLog,
        options: ControllerOptions | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.source = source
        self.audit = audit
        self.options = options or ControllerOptions()
        self.environ = environ
        self.metrics = Metrics()
        self.identity = controller_identity()
        self.requests = PassRequests()
        self.connections = Connections()
        self.rules = Rules(
            self.options.backoff, self.options.crashloop_attempts, self.options.crashloop_window
        )
        self.history = History()  # backoff and crash-loop state: replaced whole after each pass
        self.rng = random.Random()  # the backoff jitter
        self.pauses = pauses_for(source, audit)
        self.loop: ReconcileLoop[Request] = ReconcileLoop(
            self.requests,
            self._reconcile,
            retry_delay=lambda failures: self.options.backoff.delay(failures, self.rng),
            triggers=self.metrics.triggers,
            outcomes=self.metrics.passes,
            log=log,
        )
        self.lock: LeaderLock | None = None
        self.shard: Shard | None = None  # run --shard: this controller acts only on its own hosts
        self.desired = DesiredState(source, audit, self.metrics, self.identity, standby=self._standby)
        self.events = EventWatchers(self.loop.request)
        self.status = StatusWriter(audit, source, self.identity)
        self._file_watcher: Watcher | None = None
        self._rollout_pause: str | None = None
        self._http: StatusServer | None = None
        self.feed = ConsoleFeed()  # what the console (/ui) shows of the passes as they go
        self._console: ControllerBackend | None = None
        self._recovered: set[str] = set()  # clusters whose interrupted rows were marked
        self._last_result: PassResult | None = None
        # hosts unreachable when last tried: audited when they go and come back, not every pass
        self._troubles: frozenset[str] = frozenset()
        self._leading = False  # held the leader lock at the last change (for leadership_lost)
        # what scopes the passes (reconciler.scope): the document whose full pass was not refused, the
        # hosts last seen running a server, the resync's slices and the next one
        self._full_digest: str | None = None
        self._servers_seen: frozenset[str] = frozenset()
        self._slices, self._slice = 1, 0
        self._drift: dict[str, int] = {}  # each host's drift as the last pass that looked at it saw it
        self.concurrency = Concurrency()  # hosts observed at once, adapted pass after pass
        self.systemd = Notifier(environ)  # Type=notify: READY=1, WATCHDOG=1, STOPPING=1 (sd_notify)

    # --- lifecycle ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or :meth:`stop`); returns the exit code."""
        return self.loop.run(self.start_background, self.shutdown)

    @property
    def passes_run(self) -> int:
        return self.loop.calls

    @property
    def fatal(self) -> str | None:
        """Why the controller stopped on its own (exit code 1)."""
        return self.loop.fatal

    def start_background(self) -> None:
        if self.options.http:
            self._console = ControllerBackend(self, self.feed)
            self._http = StatusServer(
                self.options.http,
                self.metrics.registry,
                self.healthz,
                self.readyz,
                self.status_document,
                token=self.options.http_token,
                console=Console(self._console, self.options.http_token),
            )
            self._http.start()
            log.info(
                "serving /healthz, /readyz, /metrics and the console /ui on http://%s", self.options.http
            )
        interval = self.options.interval
        self.metrics.resync_interval.set(interval)
        self.loop.request_every(RESYNC, interval, max(0.0, interval * self.options.jitter), "resync")
        if self.options.prune_after is not None:
            self.loop.call_every(self._prune, 3600.0, "prune")
        self.loop.call_every(self._heartbeat, HEARTBEAT_S, "heartbeat")  # at once, then every 10 s
        if self.systemd.enabled:
            self.loop.call_every(self._tell_systemd, min(self.systemd.watchdog_every or 1.0, 1.0), "systemd")
        self.loop.start_scheduler()
        if self.options.watch_file:
            kind = "file" if isinstance(self.source, FileSource) else "kv"
            self._file_watcher = self.source.watcher(lambda: self.loop.request(kind))
            self._file_watcher.start()
        if isinstance(self.source, ConsulSource) and self.options.leader_election:
            # on_fatal: something no retry can fix (Consul refuses the leader session's TTL): stop, exit 1
            lock = self.lock = _leader_lock(
                self.source, self.options, self.identity, self._on_leadership, self.loop.fail
            )
            # read at each scrape: the lock's own word (its renewal fresh), not the last change the
            # lock's loop announced, which comes a request timeout later when Consul goes away
            self.metrics.leader.set_function(lambda: 1.0 if lock.is_leader() else 0.0)
            self.lock.start()
            if self.options.shard:
                self.shard = _shard(self.source, self.options, self.identity, lock, self.loop)
                self.shard.membership.start()
        self.loop.request("startup")

    def stop(self) -> None:
        self.loop.stop()

    def shutdown(self) -> None:
        self.systemd.stopping()
        self.loop.close()
        try:
            self.audit.state.controller_stopped(self.identity)
        except Exception as exc:  # the database is away: status will see the heartbeat stop instead
            log.warning("could not record this controller's stop in the audit database: %s", exc)
        if self._file_watcher is not None:
            self._file_watcher.stop()
        if self.shard is not None:
            self.shard.membership.stop()
            self.shard.membership.join(timeout=10)
        if self.lock is not None:
            self.lock.stop()
            self.lock.join(timeout=10)
        self.events.stop()
        self.feed.close()  # the console's event streams end
        if self._http is not None:
            self._http.stop()
        if self._console is not None:
            self._console.close()
        self.connections.close()
        self.concurrency.close()

    @property
    def stopping(self) -> bool:
        return self.loop.stopping

    # --- triggers ----------------------------------------------------------------------------------

    def _on_leadership(self, leading: bool) -> None:
        if self._leading and not leading:
            self.metrics.leadership_lost.inc()
        self._leading = leading
        if leading:
            self.loop.request("leader")

    def _acting(self) -> bool:
        """May this controller start an action now? (not stopping, and the leader if electing; sharded: a
        live member, the host checked by each action)"""
        if self.shard is not None:
            return not self.loop.stopping and self.shard.lapsed() is None
        return not self.loop.stopping and (self.lock is None or self.lock.is_leader())

    def _leadership_lost(self) -> str | None:
        if self.shard is not None:
            return self.shard.lapsed()
        if self.lock is None or self.lock.is_leader():
            return None
        return "this controller is no longer the leader"

    def _standby(self) -> bool:
        return self.lock is not None and not self.lock.is_leader()

    def _repairing(self) -> bool:
        """May a repairs-only pass start an action now? (not stopping; the leader, or none knowable)"""
        lock = self.lock
        return not self.loop.stopping and (lock is None or lock.is_leader() or lock.leader_unknown())

    # --- one pass ----------------------------------------------------------------------------------

    def _reconcile(self, request: Request, started: float) -> list[Requeue]:
        """One pass; returns what it asks to follow (the loop schedules it): a retry of an unreadable
        source, a pass at the end of the first backoff window, a look again at a server change that
        waits for the cluster."""
        repairs_only = False
        sharded = self.shard is not None and not self.lock_unknown()
        if sharded and self.shard is not None and self.shard.lapsed() is not None:
            self.metrics.passes.labels("standby").inc()
            return []  # not a live member (yet, or any more): acts on nothing
        if self.lock is not None and not self.lock.is_leader() and not sharded:
            if not self.lock.leader_unknown():
                self.metrics.passes.labels("standby").inc()
                return []  # a standby under a live leader: observes nothing, acts on nothing
            # Consul does not answer (the cluster this controller repairs may be the one it asks):
            # no leader can be known, so do what needs none, from the kept document if need be.
            repairs_only = True
        written = self.audit.flush_pending()  # outcomes the database missed: recorded before anything else
        if written:
            log.info("recorded %d outcome(s) the audit database could not take earlier", written)
        loaded = self.desired.load()
        requeues = self.desired.requeues()
        if loaded is None:
            self.metrics.passes.labels("no-desired-state").inc()
            return requeues
        cluster = loaded.topology.cluster
        if cluster not in self._recovered:
            found = self.audit.mark_interrupted(cluster_id=cluster, alive=self._run_alive)
            if found:
                log.warning(
                    "found %d action(s) a previous controller left unfinished; marked interrupted; "
                    "this pass repairs what they left",
                    found,
                )
            self._recovered.add(cluster)
        deferred = self.history.deferred(time.monotonic())
        known = self.audit.state.known_hosts(cluster)  # read once a pass
        if sharded and self.shard is not None:  # the hosts not this controller's now are left alone
            deferred = self.shard.prepare(loaded, known) | deferred
        if self.options.watch_events:  # sharded: the events of its own hosts only
            self.events.sync(loaded, self._own_hosts() if sharded else None)
        scope = self._scope(request, loaded, known)
        log.debug(
            "pass (%s; %s), %.1f ms after the first request",
            request.label(),
            scope.why if scope.hosts is None else f"{scope.why}: {len(scope.hosts)} host(s)",
            (started - request.first) * 1e3,
        )
        trigger = request.label() + (" (repairs only: no leader can be known)" if repairs_only else "")
        result = self._pass(loaded, trigger, repairs_only, deferred, scope, known)
        if refused_as_dangerous(result):
            # A document that makes a dangerous change it does not acknowledge is refused, like an
            # invalid one: the last applied document stays enforced (a killed agent is still repaired).
            previous = self.desired.previous()
            if previous is not None and previous.digest != loaded.digest:
                log.error(
                    "desired state %s refused (%s); enforcing the last applied document %s meanwhile",
                    loaded.digest[:12],
                    result.refused,
                    previous.digest[:12],
                )
                loaded = previous
                trigger += f" (the last applied document: {result.plan.cluster}'s new one is refused)"
                result = self._pass(previous, trigger, repairs_only, deferred, FULL, known)
        else:
            self.desired.keep(loaded)
        requeues += self._after_pass(result, loaded, time.monotonic() - started)
        self.status.write_status(loaded, result, self.options.status_prefix)
        return requeues

    def _scope(self, request: Request, loaded: Loaded, known: Mapping[str, Mapping[str, Any]]) -> Scope:
        """The hosts this pass looks at (reconciler.scope), and the resync's next slice."""
        hosts = endpoints_to_observe(loaded.fleet, self.audit, known).keys()
        count = slice_count(len(hosts))
        if count != self._slices:
            self._slices, self._slice = count, 0
            self.metrics.resync_slices.set(count)
            interval = self.options.interval / count
            log.info("the resync is spread over %d slice(s) of the hosts: one every %.1fs", count, interval)
            self.loop.request_every(RESYNC, interval, max(0.0, interval * self.options.jitter), "resync")
        servers = {h.name for h in loaded.fleet.hosts if any(s.role == "server" for s in h.specs)}
        scope = pass_scope(
            request.reasons,
            hosts=hosts,
            anchors=servers | self._servers_seen,
            resync_slice=(self._slice, self._slices),
            scoped_allowed=self._full_digest == loaded.digest,
        )
        if RESYNC in request.reasons:
            self._slice = (self._slice + 1) % self._slices
        return scope

    def _pass(
        self,
        loaded: Loaded,
        trigger: str,
        repairs_only: bool,
        deferred: dict[str, str],
        scope: Scope,
        known: Mapping[str, Mapping[str, Any]],
    ) -> PassResult:
        try:
            result = self._run_pass(loaded, trigger, repairs_only, deferred, scope, known)
        except BaseException:
            self.feed.changed()  # the pass ended: the console stops showing it as running
            raise
        if scope.full:  # scoped passes follow only a full pass of this document that was not refused
            self._full_digest = None if result.refused else loaded.digest
        looked = {h.name for h in result.observed.hosts if h.reachable}
        running = {h.name for h in result.observed.hosts if any(c.role == "server" for c in h.managed)}
        self._servers_seen = (self._servers_seen - looked) | running
        return result

    def _run_pass(
        self,
        loaded: Loaded,
        trigger: str,
        repairs_only: bool,
        deferred: dict[str, str],
        scope: Scope,
        known: Mapping[str, Mapping[str, Any]],
    ) -> PassResult:
        return run_pass(
            loaded,
            source=self.source.describe(),
            connections=self.connections,
            audit=self.audit,
            options=self.options.passes,
            trigger=trigger,
            environ=self.environ,
            should_stop=(lambda: not self._repairing()) if repairs_only else (lambda: not self._acting()),
            deferred=deferred,
            controller=self.identity,
            lock=self._fencing(repairs_only),
            confirm_leadership=self.lock.confirm if self.lock is not None else (lambda: None),
            leadership_lost=self._leadership_lost,
            repairs_only=repairs_only,
            progress=self.loop.progress,
            pauses=self.pauses,
            known_troubles=self._troubles,
            on_plan=self._planned,
            gate_watch=self.feed.looked,
            scope=scope,
            concurrency=self.concurrency,
            known_hosts=known,
            may_act=self.shard.may_act if self.shard is not None and not repairs_only else lambda host: None,
        )

    def _own_hosts(self) -> frozenset[str]:
        """The hosts this sharded controller owns (acting on them, or waiting to)."""
        assert self.shard is not None
        return frozenset(h for h, owner in self.shard.owners().items() if owner == self.identity)

    def lock_unknown(self) -> bool:
        return self.lock is not None and self.lock.leader_unknown()

    def _fencing(self, repairs_only: bool) -> tuple[str | None, int | None] | None:
        """What a run acted under: the member session and its fencing index when sharded, else the leader
        lock's session and LockIndex; nothing for repairs made while no leader can be known."""
        if repairs_only:
            return None
        if self.shard is not None:
            return self.shard.membership.fencing()
        return self.lock.fencing() if self.lock is not None else None

    def _planned(self, plan: Plan) -> None:
        if self.shard is not None:
            self.shard.planned(plan)
        self.feed.planned(plan)

    def _run_alive(self, owner: str | None, holder: str | None) -> bool:
        return _run_alive(owner, holder, self.identity, self.lock)

    def _after_pass(self, result: PassResult, loaded: Loaded, duration: float) -> list[Requeue]:
        now = time.monotonic()
        drift = reporting.count_pass(self.metrics, result, duration)
        self.metrics.pass_hosts.set(len(result.observed.hosts))
        looked = {h.name for h in result.observed.hosts} | set(result.plan.unreachable)
        hosts = [h.name for h in loaded.topology.hosts]
        desired = set(hosts)
        self._drift = {h: n for h, n in self._drift.items() if h in desired and h not in looked} | drift
        if self.shard is not None:  # only its own hosts: the others' state is their owners' to report
            self.shard.observed(result.observed, loaded.topology.cluster)
            hosts = [h for h in hosts if h not in result.plan.deferred]
        summary = summarize(result, hosts)
        verdict = assess(summary, now, self.history, self.rules, self.rng)
        self.history = verdict.history
        if result.run_id is not None:
            for seq, note in enumerate(verdict.notes, start=SEQ_CONTROLLER_NOTES + 1):
                record = ActionRecord(
                    seq=seq, host=note.host, kind=note.kind, reason=[{"message": note.message}]
                )
                self.audit.record_action(result.run_id, record, status="skipped")

        pause = self.pauses.get(loaded.topology.cluster)
        self.metrics.rollout_paused.set(1 if pause else 0)
        self._rollout_pause = pause[0] if pause else None
        reporting.count_hosts(
            self.metrics,
            result,
            verdict,
            hosts,
            drift_elsewhere=any(n for h, n in self._drift.items() if not result.scope.covers(h)),
        )
        self._last_result = result
        self._troubles = result.troubles
        self.feed.passed(result)
        self.status.write_host_states(
            loaded, result, self._drift, self.history.hosts, only=hosts if self.shard is not None else None
        )
        counts = ", ".join(f"{k} {v}" for k, v in result.plan.counts().items() if v)
        line = changes_line(result.plan, counts, hosts=len(loaded.topology.hosts))
        problem = result.error()
        scope = result.scope
        observed = len(result.observed.hosts)
        looked_at = "" if scope.hosts is None else f" [{scope.why}: {observed} of {len(desired)} hosts]"
        # a pass that found nothing new (no run written) does not repeat a known trouble as a warning
        if result.run_id is None:  # nothing done and nothing new: no run, and no verdict to repeat
            log.info("pass: nothing new, not recorded, in %.0f ms (%s)%s", duration * 1e3, line, looked_at)
        else:
            (log.info if result.ok else log.warning)(
                "pass %s: %s in %.0f ms (%s)%s%s",
                result.run_id,
                result.status,
                duration * 1e3,
                line,
                looked_at,
                f": {problem}" if problem and result.status != "succeeded" else "",
                extra={"run": result.run_id},
            )
        return verdict.requeues()

    def _tell_systemd(self) -> None:
        """READY=1 once ready; WATCHDOG=1 at least every half watchdog period while healthy."""
        ready, detail = self.readyz()
        if ready:
            self.systemd.ready(f"converging {self.source.describe()} (desired {str(detail['digest'])[:12]})")
        if self.systemd.watchdog_every is not None:
            healthy, why = self.healthz()
            self.systemd.watchdog(healthy, str(why.get("reason", "")))

    def _heartbeat(self) -> None:
        """Tell the audit database this controller is alive (``status`` reads it). A failed write is
        only logged: the passes report a database that is away."""
        try:
            self.audit.state.controller_beat(
                self.identity, source=self.source.describe(), version=__version__, heartbeat_s=HEARTBEAT_S
            )
        except Exception as exc:
            log.debug("heartbeat not written: %s", exc)

    def _prune(self) -> None:
        if self.options.prune_after is None:
            return
        deleted = self.audit.prune(datetime.now(UTC) - self.options.prune_after)
        if deleted:
            log.info("pruned %d audit action row(s) older than %s", deleted, self.options.prune_after)

    # --- probes ------------------------------------------------------------------------------------

    def healthz(self) -> tuple[bool, dict[str, object]]:
        """Alive and making progress, or legitimately waiting (reconciler.reporting.healthz)."""
        return reporting.healthz(self.loop, self.lock, self.options.health_factor * self.options.interval)

    def readyz(self) -> tuple[bool, dict[str, object]]:
        return reporting.readyz(self.desired.last_valid, self.loop.last_end)

    def status_document(self) -> dict[str, object]:
        return reporting.status_document(self)


HEARTBEAT_S = 10.0  # how often a running controller writes its heartbeat (status: MISSED_HEARTBEATS)


def refused_as_dangerous(result: PassResult) -> bool:
    """Was the pass refused for a dangerous change its document does not acknowledge?"""
    return bool(result.refused) and any(not d.acknowledged for d in result.plan.dangers)


def _run_alive(owner: str | None, holder: str | None, identity: str, lock: LeaderLock | None) -> bool:
    """Is the controller that left a run open still at work? (a peer sharing the audit database)
    On this machine: its process exists. Under leader election: Consul still knows its session.
    Otherwise, or when Consul cannot tell, it is taken for dead: its rows are marked interrupted."""
    if owner and owner != identity:
        host, _, pid = owner.rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            return _pid_alive(int(pid))
    if holder and lock is not None:
        try:
            return lock.consul.session_alive(holder)
        except ConsulError:
            return False
    return False


def _leader_lock(
    source: ConsulSource,
    options: ControllerOptions,
    identity: str,
    on_change: Callable[[bool], None],
    on_fatal: Callable[[str], None],
) -> LeaderLock:
    key = options.lock_key or lock_key_for(source.address.key)
    return LeaderLock(
        Consul(source.address.with_key(key), timeout=min(5.0, options.lock_ttl / 3)),
        key,
        identity,
        ttl=options.lock_ttl,
        lock_delay=options.lock_delay,
        on_change=on_change,
        on_fatal=on_fatal,
    )


def _shard(
    source: ConsulSource,
    options: ControllerOptions,
    identity: str,
    lock: LeaderLock,
    loop: ReconcileLoop[Request],
) -> Shard:
    """The membership (with the lock's TTL and lock-delay, and the source's token and TLS) and the
    decisions on top of it."""
    timeout = min(5.0, options.lock_ttl / 3)
    membership = Membership(
        Consul(source.address, timeout=timeout),
        Consul(source.address, timeout=timeout),
        source.address.key,
        identity,
        ttl=options.lock_ttl,
        lock_delay=options.lock_delay,
        on_fatal=loop.fail,
    )

    def gained(after: float) -> None:
        if after <= 0:
            loop.request("shard")
        else:
            loop.request_in("shard", after)

    shard = Shard(membership, lock, gained)
    membership.on_change = shard.refreshed
    return shard


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's
    return True
