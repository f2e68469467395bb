"""consul-reconciler: the command line.

Exit codes: 0 success (for ``plan``: nothing to do), 1 error or not converged,
2 (``plan`` only) changes are pending.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from desired_state.load import Loaded, TopologyError, load_topology
from desired_state.render import render as render_fleet
from desired_state.secrets import check_secrets
from reconciler import __version__
from reconciler.audit import ActionFilter, AuditLog, parse_since
from reconciler.cliutil import open_audit, read_token_file
from reconciler.consul_api import ConsulError
from reconciler.consul_settings import resolve_ca
from reconciler.engines import Connections
from reconciler.execute import ExecOptions
from reconciler.kvcli import kv_app
from reconciler.logs import setup_logging
from reconciler.pauses import pauses_for
from reconciler.plan import DEFAULT_MAX_REMOVALS, Kind
from reconciler.present import docker_run_line, format_plan, text_table
from reconciler.reconcile import PassOptions, compute_plan, run_pass
from reconciler.sources import ConsulSource, FileSource, SourceError, open_source

app = typer.Typer(
    name="consul-reconciler",
    help=(
        "Keep a Consul datacenter (servers, clients and a Registrator beside each agent) converged on "
        "plain Docker hosts. Describe the cluster in a topology file; `plan` shows what would change, "
        "`apply` converges every host and records each action in the audit log."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

SourceArg = Annotated[
    str | None,
    typer.Argument(
        help="The desired state: a topology file (YAML or JSON) or consul://HOST:PORT/KEY "
        "(consul+https://... with $CONSUL_CACERT; token from $CONSUL_HTTP_TOKEN). "
        "Default: $CONSUL_RECONCILER_SOURCE.",
        envvar="CONSUL_RECONCILER_SOURCE",
        show_default=False,
    ),
]
SourceOpt = Annotated[
    str | None,
    typer.Option("--source", help="The same as the SOURCE argument (give either).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of text.")]
PullOpt = Annotated[
    bool, typer.Option("--pull/--no-pull", help="Pull images missing on a host (--no-pull: fail instead).")
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Audit database: a SQLAlchemy URL or a SQLite file path. "
        "Default: $CONSUL_RECONCILER_DB, else ~/.local/state/consul-reconciler/audit.db.",
        show_default=False,
    ),
]
MaxRemovalsOpt = Annotated[
    int,
    typer.Option("--max-removals", min=0, help="Refuse a pass that would remove more containers than this."),
]
ConsulTokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--consul-token-file",
        help="File holding the Consul ACL token, for a consul:// source and the server agents' health "
        "gates. It wins over $CONSUL_HTTP_TOKEN (then $CONSUL_HTTP_TOKEN_FILE), as in Consul's CLI.",
        show_default=False,
    ),
]
AdoptOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--adopt",
        metavar="HOST/NAME",
        help="Take over an unmanaged container whose name the topology wants (it is replaced). Repeatable.",
    ),
]


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


def _consul_token(path: Path | None) -> str | None:
    return None if path is None else read_token_file(path, "--consul-token-file", _fail)


def _source(arg: str | None, opt: str | None = None, token: str | None = None) -> FileSource | ConsulSource:
    spec = opt or arg
    if arg and opt and arg != opt:
        _fail(f"two sources given ({arg} and --source {opt}); give one")
    if not spec:
        _fail(
            "no desired state given: pass a topology file or consul://HOST:PORT/KEY (or set "
            "$CONSUL_RECONCILER_SOURCE)"
        )
    try:
        return open_source(spec, ca=resolve_ca(None), token=token)
    except ValueError as exc:
        _fail(str(exc))


def _load(arg: str | None, opt: str | None = None, token: str | None = None) -> Loaded:
    src = _source(arg, opt, token)
    try:
        data = src.read()
    except SourceError as exc:
        _fail(str(exc))
    try:
        return load_topology(data, source=src.describe(), fmt=src.fmt)
    except TopologyError as exc:
        err.print(f"error: {src.describe()} is not a valid topology:", markup=False)
        for issue in exc.issues:
            err.print(f"  {issue}", markup=False)
        raise typer.Exit(1) from None


def _refuse_under_a_live_leader(src: ConsulSource) -> None:
    """A controller that holds the leader lock acts on this cluster: a second actor would race it."""
    from reconciler.leader import live_holder, lock_key_for

    key = lock_key_for(src.address.key)
    try:
        holder = live_holder(src.consul, key)
    except ConsulError as exc:
        _fail(f"cannot tell whether a controller leads this cluster ({exc}); --force applies anyway")
    if holder is not None:
        _fail(
            f"a running controller ({holder}) holds the leader lock {key} and acts on this cluster; "
            "apply would act beside it. Let it converge (it follows the same document), stop it, or "
            "pass --force"
        )


def _print_warnings(loaded: Loaded) -> None:
    for warning in loaded.warnings:
        err.print(f"warning: {warning}", markup=False)


def _audit(db: str | None) -> AuditLog:
    return open_audit(db, _fail)


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


@app.callback()
def _root(
    log_format: Annotated[
        str, typer.Option("--log-format", help="Log lines as 'text' (default) or 'json' (one object a line).")
    ] = "text",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
) -> None:
    if log_format not in ("text", "json"):
        _fail(f"--log-format must be 'text' or 'json', not {log_format!r}")
    setup_logging(log_format, logging.DEBUG if verbose else logging.INFO)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


@app.command()
def validate(source: SourceArg = None, as_json: JsonOpt = False, source_opt: SourceOpt = None) -> None:
    """Check a topology file: every error with its place, secret references resolved. Exit 1 on errors."""
    data_issues: list[dict[str, Any]] = []
    src = _source(source, source_opt)
    try:
        loaded = load_topology(src.read(), source=src.describe(), fmt=src.fmt)
    except SourceError as exc:
        _fail(str(exc))
    except TopologyError as exc:
        if as_json:
            _emit_json({"valid": False, "errors": [i.to_dict() for i in exc.issues], "warnings": []})
        else:
            err.print(f"{src.describe()}: {len(exc.issues)} error(s)", markup=False)
            for issue in exc.issues:
                err.print(f"  error: {issue}", markup=False)
        raise typer.Exit(1) from None
    secret_issues = check_secrets(loaded.topology)
    data_issues = [i.to_dict() for i in secret_issues]
    if as_json:
        _emit_json(
            {
                "valid": not secret_issues,
                "errors": data_issues,
                "warnings": [w.to_dict() for w in loaded.warnings],
                "digest": loaded.digest,
            }
        )
    else:
        for warning in loaded.warnings:
            err.print(f"  warning: {warning}", markup=False)
        for issue in secret_issues:
            err.print(f"  error: {issue}", markup=False)
        if not secret_issues:
            t = loaded.topology
            out.print(
                f"{src.describe()}: valid: cluster {t.cluster}, datacenter {t.datacenter}, "
                f"{len(t.servers)} server(s), {len(t.hosts) - len(t.servers)} client(s)",
                markup=False,
            )
    if secret_issues:
        raise typer.Exit(1)


@app.command()
def render(
    source: SourceArg = None,
    host: Annotated[str | None, typer.Option("--host", help="Only this host.")] = None,
    source_opt: SourceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show each host's containers as the equivalent `docker run` lines (no engine is contacted)."""
    loaded = _load(source, source_opt)
    _print_warnings(loaded)
    fleet = render_fleet(loaded.topology)
    hosts = [h for h in fleet.hosts if host is None or h.name == host]
    if host is not None and not hosts:
        names = ", ".join(h.name for h in fleet.hosts)
        _fail(f"no host named {host!r} in {source or source_opt} (hosts: {names})")
    if as_json:
        _emit_json(
            {
                "cluster": fleet.cluster,
                "datacenter": fleet.datacenter,
                "hosts": [
                    {
                        "name": h.name,
                        "docker": h.endpoint.url,
                        "containers": [
                            {
                                "name": s.name,
                                "role": s.role,
                                "node": s.node,
                                "spec_hash": s.spec_hash(),
                                **s.record(),
                                "full_command": list(s.command),
                                "docker_run": docker_run_line(s),
                            }
                            for s in h.specs
                        ],
                    }
                    for h in hosts
                ],
            }
        )
        return
    for h in hosts:
        out.print(f"# host {h.name}  ({h.endpoint.url})", markup=False)
        for spec in h.specs:
            out.print(docker_run_line(spec), markup=False)
        out.print("")


@app.command()
def plan(
    source: SourceArg = None,
    source_opt: SourceOpt = None,
    as_json: JsonOpt = False,
    db: DbOpt = None,
    max_removals: MaxRemovalsOpt = DEFAULT_MAX_REMOVALS,
    adopt: AdoptOpt = None,
    consul_token_file: ConsulTokenFileOpt = None,
) -> None:
    """Compare the topology with the hosts and show what `apply` would do.

    Exit 0 when nothing is to do, 2 when changes are pending, 1 on error.
    """
    loaded = _load(source, source_opt, _consul_token(consul_token_file))
    _print_warnings(loaded)
    audit = _audit(db)
    connections = Connections()
    try:
        _, _, the_plan = compute_plan(
            loaded, connections, audit, PassOptions(max_removals=max_removals, adopt=tuple(adopt or ()))
        )
    finally:
        connections.close()
        audit.close()
    if as_json:
        _emit_json(the_plan.to_dict())
    else:
        out.print(format_plan(the_plan), markup=False)
    if the_plan.refused or the_plan.unreachable:
        raise typer.Exit(1)
    raise typer.Exit(0 if the_plan.is_noop else 2)


@app.command()
def apply(
    source: SourceArg = None,
    source_opt: SourceOpt = None,
    as_json: JsonOpt = False,
    db: DbOpt = None,
    max_removals: MaxRemovalsOpt = DEFAULT_MAX_REMOVALS,
    adopt: AdoptOpt = None,
    pull: PullOpt = True,
    stop_timeout: Annotated[int, typer.Option(help="Seconds a container gets to stop.")] = 30,
    consul_token_file: ConsulTokenFileOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="With a consul:// source, apply even while a running controller holds the leader lock "
            "(both would act at once).",
        ),
    ] = False,
) -> None:
    """Run one pass: converge every host to the topology, recording each action in the audit log.

    Exit 0 when every host converged; 1 when an action failed, a host was unreachable, a name was
    blocked by an unmanaged container, or the pass was refused.
    """
    token = _consul_token(consul_token_file)
    src = _source(source, source_opt, token)
    if isinstance(src, ConsulSource) and not force:
        _refuse_under_a_live_leader(src)
    loaded = _load(source, source_opt, token)
    _print_warnings(loaded)
    audit = _audit(db)
    connections = Connections()
    options = PassOptions(
        max_removals=max_removals,
        adopt=tuple(adopt or ()),
        exec=ExecOptions(pull=pull, stop_timeout=stop_timeout),
        consul_token=token,
    )
    try:
        result = run_pass(
            loaded,
            source=src.describe(),
            connections=connections,
            audit=audit,
            options=options,
            pauses=pauses_for(src, audit),
        )
    finally:
        connections.close()
        audit.close()
    if as_json:
        _emit_json(
            {
                "run": result.run_id,
                "status": result.status,
                "refused": result.refused,
                "plan": result.plan.to_dict(),
                "results": [
                    {
                        "kind": r.action.kind.value,
                        "host": r.action.host,
                        "container": r.action.name,
                        "status": r.status,
                        "error": r.error,
                        "container_id": r.container_id,
                    }
                    for r in (result.applied.results if result.applied else [])
                ],
            }
        )
    else:
        out.print(format_plan(result.plan), markup=False)
        if result.applied is not None and result.applied.results:
            out.print("", markup=False)
            for r in result.applied.results:
                mark = {"succeeded": "ok", "failed": "FAILED", "skipped": "skipped"}[r.status]
                tail = f": {r.error}" if r.error else ""
                out.print(
                    f"{mark:>8}  {r.action.kind.value} {r.action.host}/{r.action.name}{tail}", markup=False
                )
        blocked = sum(1 for a in result.plan.actions if a.kind is Kind.BLOCKED)
        verdict = "converged" if result.ok else "NOT converged"
        extra = f", {blocked} blocked" if blocked else ""
        if result.run_id is None:
            out.print("\nconverged: nothing was done, so no run was recorded", markup=False)
        else:
            out.print(f"\nrun {result.run_id}: {result.status} ({verdict}{extra})", markup=False)
    raise typer.Exit(0 if result.ok else 1)


def _duration(text: str, option: str) -> timedelta:
    try:
        return datetime.now(UTC) - parse_since(text)
    except ValueError as exc:
        _fail(f"{option}: {exc}")


@app.command()
def run(
    source: SourceArg = None,
    source_opt: SourceOpt = None,
    db: DbOpt = None,
    interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between full resyncs (jittered).")
    ] = 30.0,
    jitter: Annotated[
        float, typer.Option(min=0, max=1, help="Resync jitter, a fraction of the interval.")
    ] = 0.1,
    http: Annotated[
        str, typer.Option(help="ADDRESS:PORT for /healthz, /readyz, /metrics; 'off' for none.")
    ] = "127.0.0.1:9321",
    http_token_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the bearer token required on a non-loopback --http address "
            "(or $CONSUL_RECONCILER_HTTP_TOKEN)."
        ),
    ] = None,
    max_removals: MaxRemovalsOpt = DEFAULT_MAX_REMOVALS,
    prune_after: Annotated[
        str | None, typer.Option(help="Delete audit rows older than this (e.g. 30d); off by default.")
    ] = None,
    backoff_base: Annotated[
        float, typer.Option(min=0.01, help="First backoff delay after a host fails (s).")
    ] = 1.0,
    backoff_max: Annotated[float, typer.Option(min=0.01, help="Longest backoff delay (s).")] = 300.0,
    crashloop_attempts: Annotated[
        int,
        typer.Option(min=1, help="Repairs of one container within the window that mark its host degraded."),
    ] = 3,
    crashloop_window: Annotated[float, typer.Option(min=1, help="Crash-loop window (s).")] = 300.0,
    stop_timeout: Annotated[int, typer.Option(help="Seconds a container gets to stop.")] = 30,
    pull: PullOpt = True,
    events: Annotated[
        bool, typer.Option("--events/--no-events", help="Watch Docker events for drift.")
    ] = True,
    consul_ca: Annotated[
        Path | None, typer.Option(help="CA file for a consul+https:// source (default $CONSUL_CACERT).")
    ] = None,
    consul_token_file: ConsulTokenFileOpt = None,
    lock_ttl: Annotated[
        float, typer.Option(min=1, help="Consul source: TTL of the leader session (s); renewed every TTL/4.")
    ] = 15.0,
    lock_delay: Annotated[
        float,
        typer.Option(
            min=0,
            help="Consul source: lock-delay after a holder's session ends (s); at least half the TTL, "
            "at most 60 (Consul's cap).",
        ),
    ] = 15.0,
    leader_election: Annotated[
        bool,
        typer.Option(
            "--leader-election/--no-leader-election", help="Consul source: only the lock holder acts."
        ),
    ] = True,
    status_prefix: Annotated[
        str, typer.Option(help="Consul source: KV prefix for per-host status documents ('' for none).")
    ] = "consul-reconciler/status",
) -> None:
    """Run the controller: converge now, then keep converging for ever.

    A pass runs every --interval seconds, and at once when the topology file changes, when a managed
    container dies, stops or disappears on any host, or when an engine comes back. SIGTERM/SIGINT
    finish the action in flight, record the run as interrupted and exit 0.
    """
    from reconciler.backoff import BackoffPolicy
    from reconciler.controller import Controller, ControllerOptions
    from reconciler.leader import lock_timing_problem

    token = None
    if http_token_file is not None:
        token = read_token_file(http_token_file, "--http-token-file", _fail)
    token = token or os.environ.get("CONSUL_RECONCILER_HTTP_TOKEN") or None
    options = ControllerOptions(
        interval=interval,
        jitter=jitter,
        http=None if http == "off" else http,
        http_token=token,
        prune_after=_duration(prune_after, "--prune-after") if prune_after else None,
        backoff=BackoffPolicy(base=backoff_base, cap=backoff_max),
        crashloop_attempts=crashloop_attempts,
        crashloop_window=crashloop_window,
        watch_events=events,
        passes=PassOptions(max_removals=max_removals, exec=ExecOptions(pull=pull, stop_timeout=stop_timeout)),
    )
    consul_token = _consul_token(consul_token_file)
    options.passes.consul_token = consul_token
    spec = source_opt or source
    if not spec:
        _source(source, source_opt)  # fails with the message
    try:
        src = open_source(str(spec), ca=resolve_ca(consul_ca), token=consul_token)
    except ValueError as exc:
        _fail(str(exc))
    if leader_election and isinstance(src, ConsulSource):
        problem = lock_timing_problem(lock_ttl, lock_delay)
        if problem is not None:
            _fail(problem)
    options.lock_ttl, options.lock_delay = lock_ttl, lock_delay
    options.leader_election = leader_election
    options.status_prefix = status_prefix or None
    audit = _audit(db)
    try:
        controller = Controller(src, audit, options)
        code = controller.run()
    except ValueError as exc:  # e.g. a non-loopback --http without a token
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot start the HTTP endpoint on {http}: {exc.strerror or exc}")
    finally:
        audit.close()
    raise typer.Exit(code)


@app.command()
def status(
    source: SourceArg = None, as_json: JsonOpt = False, db: DbOpt = None, source_opt: SourceOpt = None
) -> None:
    """Per host: desired vs observed containers, drift, last action and its outcome, backoff state.

    When the source cannot be read or is invalid, the status is computed against the last document the
    controller applied (kept in the audit database), and says so."""
    audit = _audit(db)
    src = _source(source, source_opt)
    source_problem: str | None = None
    try:
        loaded = load_topology(src.read(), source=src.describe(), fmt=src.fmt)
    except (SourceError, TopologyError) as exc:
        source_problem = str(exc)
        kept = audit.last_document(src.describe())
        if kept is None:
            audit.close()
            _fail(f"{source_problem}; and no document from this source was ever applied")
        loaded = load_topology(kept.document.encode(), source=f"kept document {kept.digest[:12]}")
        err.print(
            f"warning: {source_problem}; showing the last applied document {kept.digest[:12]} "
            f"(applied {_time(kept.last_applied)})",
            markup=False,
        )
    connections = Connections()
    try:
        desired, observed, the_plan = compute_plan(loaded, connections, audit, PassOptions())
        states = audit.host_states(desired.cluster)
        paused = pauses_for(src, audit).get(desired.cluster)
        hosts: list[dict[str, Any]] = []
        names = [h.name for h in desired.hosts] + [
            o.name for o in observed.hosts if desired.host(o.name) is None
        ]
        for name in names:
            wanted = desired.host(name)
            seen = observed.host(name)
            last = audit.actions(ActionFilter(host=name, limit=1))
            state = states.get(name)
            hosts.append(
                {
                    "host": name,
                    "reachable": seen.reachable if seen else None,
                    "error": seen.error if seen else None,
                    "desired": [s.name for s in wanted.specs] if wanted else [],
                    "observed": {
                        c.name: c.state
                        for c in (seen.managed if seen else ())
                        if c.managed_by == desired.cluster
                    },
                    "drift": [f"{a.kind.value} {a.name}" for a in the_plan.actions if a.host == name],
                    "last_action": last[0].to_dict() if last else None,
                    "controller_state": state.to_dict() if state else None,
                }
            )
    finally:
        connections.close()
        audit.close()
    if as_json:
        _emit_json(
            {
                "rollout_paused": paused[0] if paused else None,
                "cluster": desired.cluster,
                "digest": loaded.digest,
                "source_problem": source_problem,
                "hosts": hosts,
            }
        )
        return
    rows = []
    for h in hosts:
        observed_text = " ".join(f"{n}:{st}" for n, st in sorted(h["observed"].items())) or "-"
        if h["reachable"] is False:
            observed_text = f"UNREACHABLE ({h['error']})"
        last = h["last_action"]
        last_text = (
            f"{last['kind']} {last['container'] or ''} {last['status']} {_time_iso(last['started_at'])}"
            if last
            else "-"
        )
        st = h["controller_state"]
        state_text = (
            "-"
            if st is None
            else st["state"]
            + (f" (failures {st['failures']}, retry {_time_iso(st['retry_at'])})" if st["failures"] else "")
        )
        rows.append(
            [
                h["host"],
                " ".join(h["desired"]) or "-",
                observed_text,
                ", ".join(h["drift"]) or "none",
                state_text,
                last_text,
            ]
        )
    out.print(
        text_table(["host", "desired", "observed", "drift", "controller", "last action"], rows), markup=False
    )
    if paused:
        out.print(
            f"\nROLLOUT PAUSED since {_time(paused[2])}: {paused[0]}\n"
            "(no server is touched until `consul-reconciler resume` or a new desired state)",
            markup=False,
        )


def _time_iso(value: str | None) -> str:
    return value.replace("T", " ")[:19] if value else ""


@app.command()
def resume(
    source: SourceArg = None, db: DbOpt = None, source_opt: SourceOpt = None, as_json: JsonOpt = False
) -> None:
    """Resume a server rollout paused by a failed health gate (after fixing its cause).

    A paused rollout touches no server until this command, or until the desired state changes. With
    the desired state in Consul KV the pause is kept there too (KEY.pause), for every controller; this
    clears both."""
    src = _source(source, source_opt)
    loaded = _load(source, source_opt)
    cluster = loaded.topology.cluster
    audit = _audit(db)
    pauses = pauses_for(src, audit)
    try:
        pause = pauses.get(cluster)
        if pause is None:
            message = f"cluster {cluster}: no rollout is paused"
        else:
            try:
                pauses.clear(cluster)
            except ConsulError as exc:
                _fail(str(exc))
            run_id = audit.start_run(
                cluster_id=cluster,
                trigger="resume",
                source=_source(source, source_opt).describe(),
                digest=loaded.digest,
            )
            audit.finish_run(run_id, status="succeeded", summary={"resumed": pause[0]})
            message = f"cluster {cluster}: rollout resumed (was paused since {_time(pause[2])}: {pause[0]})"
    finally:
        audit.close()
    if as_json:
        _emit_json({"cluster": cluster, "resumed": pause is not None, "reason": pause[0] if pause else None})
    else:
        out.print(message, markup=False)


@app.command("audit")
def audit_cmd(
    host: Annotated[str | None, typer.Option(help="Only actions on this host.")] = None,
    node: Annotated[str | None, typer.Option(help="Only actions on this Consul node.")] = None,
    kind: Annotated[
        str | None, typer.Option(help="create, replace, start, remove, blocked, adopt, observe.")
    ] = None,
    status: Annotated[
        str | None, typer.Option(help="started, succeeded, failed, skipped, interrupted.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Relative (90s, 15m, 2h, 3d, 1w) or an ISO time.")] = None,
    run: Annotated[int | None, typer.Option(help="Only actions of this run (pass).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows (newest first).")] = 50,
    runs: Annotated[bool, typer.Option("--runs", help="List passes (runs) instead of actions.")] = False,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Query the audit log: who changed what, when, and why."""
    try:
        since_at = parse_since(since) if since else None
    except ValueError as exc:
        _fail(f"--since: {exc}")
    log_db = _audit(db)
    try:
        if runs:
            run_rows = log_db.runs(limit=limit)
            if as_json:
                _emit_json([r.to_dict() for r in run_rows])
                return
            out.print(
                text_table(
                    ["run", "started", "status", "trigger", "digest", "summary / error"],
                    [
                        [
                            str(r.id),
                            _time(r.started_at),
                            r.status,
                            r.trigger,
                            (r.digest or "")[:12],
                            r.error or json.dumps(r.summary or {}),
                        ]
                        for r in run_rows
                    ],
                ),
                markup=False,
            )
            return
        rows = log_db.actions(
            ActionFilter(
                host=host, node=node, kind=kind, status=status, since=since_at, run_id=run, limit=limit
            )
        )
    finally:
        log_db.close()
    if as_json:
        _emit_json([r.to_dict() for r in rows])
        return
    table_rows: list[list[str]] = []
    for a in rows:
        why = "; ".join(_reason_text(r) for r in (a.reason or []))
        if a.error:
            why = f"{why} | {a.error}" if why else a.error
        ms = f"{a.duration_ms:.0f}" if a.duration_ms is not None else ""
        table_rows.append(
            [
                str(a.id),
                str(a.run_id),
                _time(a.started_at),
                a.host,
                a.container or "",
                a.kind,
                a.status,
                ms,
                why,
            ]
        )
    headers = ["id", "run", "started", "host", "container", "kind", "status", "ms", "reason / error"]
    out.print(text_table(headers, table_rows) if table_rows else "no matching actions", markup=False)


def _reason_text(reason: dict[str, Any]) -> str:
    if "field" in reason:
        return f"{reason['field']}: {reason.get('old')} -> {reason.get('new')}"
    return str(reason.get("message", ""))


def _time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


app.add_typer(kv_app, name="kv")


def main() -> None:
    """The command line; no input ends in a traceback (with -v, an unexpected failure shows one)."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a failure no command handled: one line, the detail with -v
        if logging.getLogger("consul_reconciler").isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        what = type(exc).__name__ + (f": {first}" if first else "")
        err.print(f"error: {what} (unexpected; -v shows where)", markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
