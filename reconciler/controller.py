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
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from desired_state.load import Loaded, TopologyError, digest_of, load_topology
from desired_state.spec import Endpoint
from reconciler.assess import History, PassSummary, Rules, assess
from reconciler.backoff import BackoffPolicy
from reconciler.consul_api import Consul, ConsulError
from reconciler.engines import Connections
from reconciler.httpserver import StatusServer
from reconciler.leader import LeaderLock, lock_key_for
from reconciler.loop import ReconcileLoop
from reconciler.metrics import Metrics
from reconciler.one_pass import PassOptions, PassResult, controller_identity, run_pass
from reconciler.pauses import pauses_for
from reconciler.plan import Kind
from reconciler.sources import ConsulSource, FileSource, SourceError, Watcher
from reconciler.store import AuditLog, HostState
from reconciler.store.rows import SEQ_CONTROLLER_NOTES
from reconciler.triggers import EventWatcher, PassRequests, Request

log = logging.getLogger("consul_reconciler.controller")

REPAIR_KINDS = (Kind.CREATE, Kind.START)
EVENT_RECHECK_DELAY = 0.1  # seconds
# A desired-state source that could not be read is read again after 1, 2, 4 ... s (at most 30 s): its
# watcher may not see the recovery (a blocking query held since before a leaderless spell answers
# only at the end of its wait, and unchanged), and the resync interval may be minutes.
SOURCE_RETRY_FIRST = 1.0
SOURCE_RETRY_MAX = 30.0


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
            self._run_pass,
            retry_delay=lambda failures: self.options.backoff.delay(failures, self.rng),
            triggers=self.metrics.triggers,
            outcomes=self.metrics.passes,
            log=log,
        )
        self._watchers: dict[str, EventWatcher] = {}
        self._file_watcher: Watcher | None = None
        self.lock: LeaderLock | None = None
        self._source_error: str | None = None
        self._source_failures = 0
        self._enforcing_kept: str | None = None  # digest of a kept document enforced since start-up
        self._kept_digest: str | None = None
        self._status_written: dict[str, str] = {}
        self._rollout_pause: str | None = None
        self._http: StatusServer | None = None
        self._last_valid: Loaded | None = None
        self._rejected_digest: str | None = None
        self._recovered: set[str] = set()  # clusters whose interrupted rows were marked
        self._last_result: PassResult | None = None
        self._lock = threading.Lock()
        self._recheck: threading.Timer | None = None

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
            self._http = StatusServer(
                self.options.http,
                self.metrics.registry,
                self.healthz,
                self.readyz,
                self.status_document,
                token=self.options.http_token,
            )
            self._http.start()
            log.info("serving /healthz, /readyz, /metrics on http://%s", self.options.http)
        interval = self.options.interval
        self.loop.request_every("interval", interval, max(0.0, interval * self.options.jitter), "resync")
        if self.options.prune_after is not None:
            self.loop.call_every(self._prune, 3600.0, "prune")
        self.loop.start_scheduler()
        if self.options.watch_file:
            kind = "file" if isinstance(self.source, FileSource) else "kv"
            self._file_watcher = self.source.watcher(lambda: self._request(kind))
            self._file_watcher.start()
        if isinstance(self.source, ConsulSource) and self.options.leader_election:
            key = self.options.lock_key or lock_key_for(self.source.address.key)
            self.lock = LeaderLock(
                Consul(self.source.address.with_key(key), timeout=min(5.0, self.options.lock_ttl / 3)),
                key,
                self.identity,
                ttl=self.options.lock_ttl,
                lock_delay=self.options.lock_delay,
                on_change=self._on_leadership,
                on_fatal=self._on_fatal,
            )
            self.lock.start()
        self._request("startup")

    def stop(self) -> None:
        self.loop.stop()

    def shutdown(self) -> None:
        self.loop.close()
        if self._file_watcher is not None:
            self._file_watcher.stop()
        if self.lock is not None:
            self.lock.stop()
            self.lock.join(timeout=10)
        for watcher in self._watchers.values():
            watcher.stop()
        if self._http is not None:
            self._http.stop()
        self.connections.close()

    @property
    def stopping(self) -> bool:
        return self.loop.stopping

    # --- triggers ----------------------------------------------------------------------------------

    def _request(self, reason: str) -> None:
        self.loop.request(reason)

    def _request_in(self, reason: str, seconds: float) -> None:
        """Ask for a pass once, ``seconds`` from now (a later call for the same reason replaces it)."""
        self.loop.request_in(reason, seconds)

    def _on_fatal(self, why: str) -> None:
        """Something no retry can fix (Consul refuses the leader session's TTL): stop, exit 1."""
        self.loop.fail(why)

    def _on_leadership(self, leading: bool) -> None:
        self.metrics.leader.set(1 if leading else 0)
        if leading:
            self._request("leader")

    def _acting(self) -> bool:
        """May this controller start an action now? (not stopping, and the leader if electing)"""
        return not self.loop.stopping and (self.lock is None or self.lock.is_leader())

    def _leadership_lost(self) -> str | None:
        if self.lock is None or self.lock.is_leader():
            return None
        return "this controller is no longer the leader"

    def _repairing(self) -> bool:
        """May a repairs-only pass start an action now? (not stopping; the leader, or none knowable)"""
        lock = self.lock
        return not self.loop.stopping and (lock is None or lock.is_leader() or lock.leader_unknown())

    def _on_event(self, host: str, action: str, event: Mapping[str, Any]) -> None:
        if action == "reconnected":
            log.info("event stream of %s is back; looking at it now", host)
            self._request(f"engine-back:{host}")
            return
        name = (event.get("Actor") or {}).get("Attributes", {}).get("name", "?")
        log.debug("docker event %s on %s/%s", action, host, name)
        self._request(f"event:{host}")
        # Docker publishes an event a moment before its container list shows the new state
        # (measured: "die" arrives while the list still says "running"). Look now, and once
        # more shortly after, so the state the event announced is seen either way.
        with self._lock:
            if self._recheck is None or not self._recheck.is_alive():
                self._recheck = threading.Timer(
                    EVENT_RECHECK_DELAY, self._request, args=[f"event-recheck:{host}"]
                )
                self._recheck.daemon = True
                self._recheck.start()

    def _sync_event_watchers(self, loaded: Loaded) -> None:
        if not self.options.watch_events:
            return
        cluster = loaded.topology.cluster
        wanted: dict[str, Endpoint] = {h.name: h.endpoint for h in loaded.fleet.hosts}
        for host, watcher in list(self._watchers.items()):
            if wanted.get(host) != watcher.endpoint:
                watcher.stop()
                del self._watchers[host]
        for host, endpoint in wanted.items():
            if host not in self._watchers:
                watcher = EventWatcher(host, endpoint, cluster, self._on_event)
                watcher.start()
                self._watchers[host] = watcher

    # --- one pass ----------------------------------------------------------------------------------

    def _run_pass(self, request: Request, started: float) -> PassResult | None:
        repairs_only = False
        if self.lock is not None and not self.lock.is_leader():
            if not self.lock.leader_unknown():
                self.metrics.passes.labels("standby").inc()
                return None  # a standby under a live leader: observes nothing, acts on nothing
            # Consul does not answer (the cluster this controller repairs may be the one it asks):
            # no leader can be known, so do what needs none, from the kept document if need be.
            repairs_only = True
        written = self.audit.flush_pending()  # outcomes the database missed: recorded before anything else
        if written:
            log.info("recorded %d outcome(s) the audit database could not take earlier", written)
        loaded = self._load()
        if loaded is None:
            self.metrics.passes.labels("no-desired-state").inc()
            return None
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
        self._sync_event_watchers(loaded)
        now = time.monotonic()
        deferred = {
            host: f"backing off after {s.failures} failure(s); next try in {s.retry_at - now:.1f}s"
            + (" (degraded: crash loop)" if s.degraded else "")
            for host, s in self.history.waiting(now).items()
        }
        log.debug(
            "pass (%s), %.1f ms after the first request", request.label(), (started - request.first) * 1e3
        )
        result = run_pass(
            loaded,
            source=self.source.describe(),
            connections=self.connections,
            audit=self.audit,
            options=self.options.passes,
            trigger=request.label() + (" (repairs only: no leader can be known)" if repairs_only else ""),
            environ=self.environ,
            should_stop=(lambda: not self._repairing()) if repairs_only else (lambda: not self._acting()),
            deferred=deferred,
            controller=self.identity,
            lock=self.lock.fencing() if self.lock is not None and not repairs_only else None,
            confirm_leadership=self.lock.confirm if self.lock is not None else (lambda: None),
            leadership_lost=self._leadership_lost,
            repairs_only=repairs_only,
            progress=self.loop.progress,
            pauses=self.pauses,
        )
        self._keep(loaded)
        self._after_pass(result, loaded, time.monotonic() - started)
        self._write_status(loaded, result)
        return result

    def _run_alive(self, owner: str | None, holder: str | None) -> bool:
        """Is the controller that left a run open still at work? (a peer sharing the audit database)
        On this machine: its process exists. Under leader election: Consul still knows its session.
        Otherwise, or when Consul cannot tell, it is taken for dead: its rows are marked interrupted."""
        if owner and owner != self.identity:
            host, _, pid = owner.rpartition(":")
            if host == socket.gethostname() and pid.isdigit():
                return _pid_alive(int(pid))
        if holder and self.lock is not None:
            try:
                return self.lock.consul.session_alive(holder)
            except ConsulError:
                return False
        return False

    def _keep(self, loaded: Loaded) -> None:
        """Remember the applied document: the last known good, even across restarts."""
        if loaded.digest != self._kept_digest:
            self.audit.keep_document(
                source=self.source.describe(),
                digest=loaded.digest,
                cluster_id=loaded.topology.cluster,
                document=loaded.text,
            )
            self._kept_digest = loaded.digest

    def _load(self) -> Loaded | None:
        """The desired state to enforce: the source's if readable and valid, else the last valid one
        (from memory, or the kept document in the database when the controller just started)."""
        try:
            data = self.source.read()
        except SourceError as exc:
            self._source_error = str(exc)
            self._source_failures += 1
            if not self.loop.stopping:
                retry = min(SOURCE_RETRY_MAX, SOURCE_RETRY_FIRST * 2 ** (self._source_failures - 1))
                self._request_in("source-retry", retry)
            self.metrics.desired_state_source_up.set(0)
            self._reject(digest_of(str(exc).encode()), str(exc))
            return self._last_valid or self._kept()
        self._source_error = None
        self._source_failures = 0
        self.metrics.desired_state_source_up.set(1)
        digest = digest_of(data)
        if self._last_valid is not None and digest == self._last_valid.digest:
            # The same bytes as the document in force: parsing and validating them again would give
            # the same result (a 10,000-host YAML document takes seconds to parse), and the rendered
            # fleet is kept with it.
            loaded = self._last_valid
        else:
            try:
                loaded = load_topology(data, source=self.source.describe(), fmt=self.source.fmt)
            except TopologyError as exc:
                self._reject(digest, "; ".join(str(i) for i in exc.issues))
                return self._last_valid or self._kept()
            log.info("desired state %s (digest %s) accepted", self.source.describe(), loaded.digest[:12])
        self._last_valid = loaded
        self._enforcing_kept = None
        self._rejected_digest = None
        self.metrics.desired_state_valid.set(1)
        return loaded

    def _kept(self) -> Loaded | None:
        row = self.audit.last_document(self.source.describe())
        if row is None:
            return None
        try:
            loaded = load_topology(row.document.encode(), source=f"kept document {row.digest[:12]}")
        except TopologyError:
            log.error("the kept document %s no longer validates; nothing is enforced", row.digest[:12])
            return None
        log.warning(
            "enforcing the kept document %s (applied %s) until the source is readable and valid",
            row.digest[:12],
            row.last_applied.isoformat(timespec="seconds"),
        )
        self._last_valid = loaded
        self._enforcing_kept = loaded.digest
        return loaded

    def _reject(self, digest: str, reason: str) -> None:
        self.metrics.desired_state_valid.set(0)
        keeping = (
            f"keeping the last valid state (digest {self._last_valid.digest[:12]})"
            if self._last_valid
            else "no valid state yet: nothing is enforced"
        )
        if digest == self._rejected_digest:
            return  # audited once per distinct document
        if self.lock is not None and not self.lock.is_leader():
            self._rejected_digest = digest
            log.error("desired state rejected: %s (a standby: not audited)", reason)
            return
        self._rejected_digest = digest
        log.error("desired state rejected: %s; %s", reason, keeping)
        cluster = self._last_valid.topology.cluster if self._last_valid else "(unknown)"
        run_id = self.audit.start_run(
            cluster_id=cluster,
            trigger="desired-state",
            source=self.source.describe(),
            digest=digest,
            controller=self.identity,
        )
        self.audit.finish_run(run_id, status="refused", error=f"desired state rejected: {reason}; {keeping}")

    def _after_pass(self, result: PassResult, loaded: Loaded, duration: float) -> None:
        now = time.monotonic()
        m = self.metrics
        m.passes.labels(result.status).inc()
        m.pass_duration.observe(duration)
        failed_hosts: dict[str, str] = {}
        repaired: dict[str, list[str]] = {}
        for r in result.applied.results if result.applied else []:
            m.actions.labels(r.action.kind.value, r.status).inc()
            if r.status == "failed":
                failed_hosts.setdefault(r.action.host, r.error or "action failed")
            elif r.status == "succeeded" and r.action.kind in REPAIR_KINDS:
                repaired.setdefault(r.action.host, []).append(r.action.name)
        for host, error in result.plan.unreachable.items():
            failed_hosts.setdefault(host, error)

        drift: dict[str, int] = {}
        for action in result.plan.actions:
            drift[action.host] = drift.get(action.host, 0) + 1
        observed_hosts = {h.name for h in result.observed.hosts}
        for host in sorted(observed_hosts | set(drift)):
            m.drift.labels(host).set(drift.get(host, 0))

        summary = PassSummary(
            failed_hosts,
            repaired,
            frozenset(observed_hosts),
            frozenset(h.name for h in loaded.topology.hosts),
            waiting=result.status == "waiting",
        )
        verdict = assess(summary, now, self.history, self.rules, self.rng)
        self.history = verdict.history
        for seq, note in enumerate(verdict.notes, start=SEQ_CONTROLLER_NOTES + 1):
            self._audit_host(result, seq, note.host, note.kind, note.message)

        pause = self.pauses.get(loaded.topology.cluster)
        m.rollout_paused.set(1 if pause else 0)
        self._rollout_pause = pause[0] if pause else None
        waiting = verdict.waiting
        m.hosts_unreachable.set(len(result.plan.unreachable))
        m.hosts_degraded.set(sum(1 for s in self.history.hosts.values() if s.degraded))
        m.hosts_backoff.set(len(waiting))
        if result.ok and not waiting:
            m.last_success.set(time.time())
        if verdict.retry_in is not None and not self.loop.stopping:
            # one pass at the end of the first backoff window among the desired hosts (at once when it
            # ended while this pass ran: the pass deferred that host, and no other trigger may come)
            self._request_in("backoff-retry", verdict.retry_in)
        if verdict.recheck_in is not None and not self.loop.stopping:
            # a server change waits for the cluster: look again soon, not only at the next resync
            self._request_in("rollout-wait", verdict.recheck_in)
        self._last_result = result
        self._write_host_states(loaded, result, drift)
        log.info(
            "pass %s: %s in %.0f ms (%s)",
            result.run_id,
            result.status,
            duration * 1e3,
            ", ".join(f"{k} {v}" for k, v in result.plan.counts().items() if v) or "no changes",
        )

    def _audit_host(self, result: PassResult, seq: int, host: str, kind: str, message: str) -> None:
        if result.run_id is None:
            return
        self.audit.record_action(
            result.run_id, seq=seq, host=host, kind=kind, status="skipped", reason=[{"message": message}]
        )

    def _write_host_states(self, loaded: Loaded, result: PassResult, drift: dict[str, int]) -> None:
        now_wall = datetime.now(UTC)
        now = time.monotonic()
        states: list[HostState] = []
        hosts = {h.name for h in loaded.topology.hosts} | {h.name for h in result.observed.hosts}
        for host in sorted(hosts):
            b = self.history.hosts.get(host)
            if b is not None and b.failures:
                state = (
                    "degraded"
                    if b.degraded
                    else ("unreachable" if host in result.plan.unreachable else "backoff")
                )
                retry_at = now_wall + timedelta(seconds=max(0.0, b.retry_at - now))
                states.append(HostState(host, state, b.failures, retry_at, drift.get(host, 0), b.last_error))
            else:
                states.append(HostState(host, "ok", 0, None, drift.get(host, 0), None))
        self.audit.set_host_states(loaded.topology.cluster, states)

    def _write_status(self, loaded: Loaded, result: PassResult) -> None:
        """Per-host status documents in Consul KV, readable in Consul's own UI (written on change)."""
        if not isinstance(self.source, ConsulSource) or not self.options.status_prefix:
            return
        prefix = f"{self.options.status_prefix.rstrip('/')}/{loaded.topology.cluster}"
        states = self.audit.host_states(loaded.topology.cluster)
        consul = self.source.consul
        for host in loaded.fleet.hosts:
            seen = result.observed.host(host.name)
            state = states.get(host.name)
            doc = {
                "host": host.name,
                "desired": {s.name: s.spec_hash() for s in host.specs},
                "observed": {
                    c.name: c.state
                    for c in (seen.managed if seen else ())
                    if c.managed_by == loaded.topology.cluster
                },
                "reachable": None if seen is None else seen.reachable,
                "drift": [f"{a.kind.value} {a.name}" for a in result.plan.actions if a.host == host.name],
                "state": state.state if state else "unknown",
                "failures": state.failures if state else 0,
                "detail": state.detail if state else None,
                "desired_digest": loaded.digest,
                "controller": self.identity,
            }
            text = json.dumps(doc, sort_keys=True)
            key = f"{prefix}/{host.name}"
            if self._status_written.get(key) == text:
                continue
            try:
                consul.put(key, text.encode())
                self._status_written[key] = text
            except ConsulError as exc:
                log.warning("could not write status %s: %s", key, exc)
                return

    def _prune(self) -> None:
        if self.options.prune_after is None:
            return
        deleted = self.audit.prune(datetime.now(UTC) - self.options.prune_after)
        if deleted:
            log.info("pruned %d audit action row(s) older than %s", deleted, self.options.prune_after)

    # --- probes ------------------------------------------------------------------------------------

    def healthz(self) -> tuple[bool, dict[str, object]]:
        """Alive and making progress, or legitimately waiting: a pass that moves on or waits on a gate
        (each look at the cluster counts), passes that end, and a leader lock loop that goes round."""
        now = time.monotonic()
        limit = self.options.health_factor * self.options.interval
        alive = self.loop.liveness()
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
        lock = self.lock
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

    def readyz(self) -> tuple[bool, dict[str, object]]:
        if self._last_valid is None:
            return False, {"reason": "no valid desired state yet"}
        if self.loop.last_end is None:
            return False, {"reason": "the first pass has not finished"}
        return True, {"digest": self._last_valid.digest}

    def status_document(self) -> dict[str, object]:
        now = time.monotonic()
        return {
            "controller": self.identity,
            "source": self.source.describe(),
            "desired_digest": self._last_valid.digest if self._last_valid else None,
            "desired_state_valid": self._rejected_digest is None,
            "source_error": self._source_error,
            "enforcing": (
                None
                if self._last_valid is None
                else {
                    "digest": self._last_valid.digest,
                    "from": "kept document" if self._enforcing_kept else "source",
                    "why": self._source_error if self._rejected_digest else None,
                }
            ),
            "leader": None if self.lock is None else self.lock.is_leader(),
            "rollout_paused": self._rollout_pause,
            "pass_error": self.loop.error,
            "lock_index": None if self.lock is None else self.lock.fencing()[1],
            "passes": self.passes_run,
            "last_run": self._last_result.run_id if self._last_result else None,
            "last_status": self._last_result.status if self._last_result else None,
            "hosts": {
                h: {
                    "failures": s.failures,
                    "degraded": s.degraded,
                    "error": s.last_error,
                    "retry_in": round(max(0.0, s.retry_at - now), 3),
                }
                for h, s in self.history.hosts.items()  # the pass thread replaces it whole, never changes it
                if s.failures
            },
        }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's
    return True
