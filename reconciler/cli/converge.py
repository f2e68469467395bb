"""`plan`, `apply` and `run`: what would change, one pass that changes it, and the controller that keeps
it so."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.cli.common import (
    ConsulCaOpt,
    ConsulTokenFileOpt,
    DbOpt,
    JsonOpt,
    SourceArg,
    SourceOpt,
    emit_json,
    fail,
    load_desired,
    open_log,
    out,
    print_plan,
    print_warnings,
    read_token_file,
    source_of,
    token_from_file,
)
from reconciler.consul_settings import resolve_ca
from reconciler.durations import parse_duration, seconds_text
from reconciler.vocabulary import DEFAULT_MAX_REMOVALS

if TYPE_CHECKING:
    from reconciler.sources import ConsulSource

# Each command imports the pass machinery (Docker, the audit database, the models) when it runs, not
# when the command line is built: see reconciler/cli/common.py.

PullOpt = Annotated[
    bool, typer.Option("--pull/--no-pull", help="Pull images missing on a host (--no-pull: fail instead).")
]
MaxRemovalsOpt = Annotated[
    int,
    typer.Option("--max-removals", min=0, help="Refuse a pass that would remove more containers than this."),
]
AdoptOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--adopt",
        metavar="all|HOST|HOST/NAME",
        help="Take over containers started by hand whose names the topology wants: every one (all), "
        "those on HOST, or one. One that matches its spec field for field is taken over as it runs "
        "(= adopt in place); any other is replaced (~ adopt by replacement), a server through the same "
        "gates as any server change. Repeatable.",
    ),
]


def _refuse_under_a_live_leader(src: ConsulSource) -> None:
    """A controller that holds the leader lock acts on this cluster: a second actor would race it."""
    from reconciler.consul_api import ConsulError
    from reconciler.leader import live_holder, lock_key_for

    key = lock_key_for(src.address.key)
    try:
        holder = live_holder(src.consul, key)
    except ConsulError as exc:
        fail(f"cannot tell whether a controller leads this cluster ({exc}); --force applies anyway")
    if holder is not None:
        fail(
            f"a running controller ({holder}) holds the leader lock {key} and acts on this cluster; "
            "apply would act beside it. Let it converge (it follows the same document), stop it, or "
            "pass --force"
        )


def plan(
    source: SourceArg = None,
    source_opt: SourceOpt = None,
    as_json: JsonOpt = False,
    db: DbOpt = None,
    max_removals: MaxRemovalsOpt = DEFAULT_MAX_REMOVALS,
    adopt: AdoptOpt = None,
    consul_token_file: ConsulTokenFileOpt = None,
    consul_ca: ConsulCaOpt = None,
) -> None:
    """Compare the topology with the hosts and show what `apply` would do.

    Exit 0 when nothing is to do, 2 when changes are pending, 1 on error.
    """
    from reconciler.engines import Connections
    from reconciler.formatting import format_plan
    from reconciler.one_pass import PassOptions, compute_plan

    loaded = load_desired(source, source_opt, token_from_file(consul_token_file), consul_ca)
    print_warnings(loaded)
    audit = open_log(db, missing="empty")
    connections = Connections()
    try:
        _, _, the_plan = compute_plan(
            loaded, connections, audit, PassOptions(max_removals=max_removals, adopt=tuple(adopt or ()))
        )
    finally:
        connections.close()
        audit.close()
    if as_json:
        emit_json(the_plan.to_dict())
    else:
        print_plan(format_plan(the_plan, len(loaded.topology.hosts)))
    if the_plan.refused or the_plan.unreachable:
        raise typer.Exit(1)
    raise typer.Exit(0 if the_plan.is_noop else 2)


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
    consul_ca: ConsulCaOpt = None,
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
    from reconciler.engines import Connections
    from reconciler.execute import ExecOptions
    from reconciler.formatting import format_plan
    from reconciler.one_pass import PassOptions, run_pass
    from reconciler.pauses import pauses_for
    from reconciler.plan import Kind
    from reconciler.sources import ConsulSource

    token = token_from_file(consul_token_file)
    src = source_of(source, source_opt, token, consul_ca)
    if isinstance(src, ConsulSource) and not force:
        _refuse_under_a_live_leader(src)
    loaded = load_desired(source, source_opt, token, consul_ca)
    print_warnings(loaded)
    audit = open_log(db)
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
        emit_json(
            {
                "run_id": result.run_id,
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
        print_plan(format_plan(result.plan, len(loaded.topology.hosts)))
        if result.applied is not None and result.applied.results:
            out.print("", markup=False)
            for r in result.applied.results:
                mark = {"succeeded": "ok", "failed": "FAILED", "skipped": "skipped", "waiting": "WAITING"}[
                    r.status
                ]
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


MIN_INTERVAL = 0.05  # seconds between resyncs, at least


def _duration(text: str, option: str, least: float = 0.0) -> timedelta:
    """``text`` in the one duration syntax of every option (reconciler.durations); an error names the
    option."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        fail(f"{option}: {exc}")
    if value.total_seconds() < least:
        fail(f"{option} {text}: at least {seconds_text(least)}")
    return value


def run(
    source: SourceArg = None,
    source_opt: SourceOpt = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help="Every option of run in a TOML (.toml) or YAML file, keys as the options' long names "
            '(interval = "1m", http = "127.0.0.1:9321", source = "/etc/consul-reconciler/topology.yaml"); '
            "flags and environment variables override it. Default: $CONSUL_RECONCILER_CONFIG.",
            show_default=False,
        ),
    ] = None,
    db: DbOpt = None,
    interval: Annotated[
        str,
        typer.Option(help="Time between full resyncs (jittered): 30 (seconds), 90s, 5m, 1h30m."),
    ] = "30s",
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
        str | None,
        typer.Option(
            help="Delete audit rows older than this (30d, 2w, 12h: --interval's syntax); off by default."
        ),
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
    consul_ca: ConsulCaOpt = None,
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
    shard: Annotated[
        bool,
        typer.Option(
            "--shard/--no-shard",
            help="Consul source with leader election: share the hosts with the other controllers run with "
            "--shard on this source (rendezvous hashing over the live members; the server rollout stays "
            "with the leader). Hosts move within the lock-delay of a member joining or leaving.",
        ),
    ] = False,
    status_prefix: Annotated[
        str, typer.Option(help="Consul source: KV prefix for per-host status documents ('' for none).")
    ] = "consul-reconciler/status",
) -> None:
    """Run the controller: converge now, then keep converging for ever.

    A pass runs every --interval, and at once when the topology file changes, when a managed
    container dies, stops or disappears on any host, or when an engine comes back. SIGTERM/SIGINT
    finish the action in flight, record the run as interrupted and exit 0.
    """
    del config  # already read by main(): its settings are the other options' defaults (config_file.py)
    from reconciler.backoff import BackoffPolicy
    from reconciler.controller import Controller, ControllerOptions
    from reconciler.execute import ExecOptions
    from reconciler.leader import lock_timing_problem
    from reconciler.one_pass import PassOptions
    from reconciler.sources import ConsulSource, open_source

    token = None
    if http_token_file is not None:
        token = read_token_file(http_token_file, "--http-token-file", fail)
    token = token or os.environ.get("CONSUL_RECONCILER_HTTP_TOKEN") or None
    options = ControllerOptions(
        interval=_duration(interval, "--interval", least=MIN_INTERVAL).total_seconds(),
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
    consul_token = token_from_file(consul_token_file)
    options.passes.consul_token = consul_token
    options.passes.consul_ca = str(consul_ca) if consul_ca else None
    spec = source_opt or source
    if not spec:
        source_of(source, source_opt)  # fails with the message
    try:
        src = open_source(str(spec), ca=resolve_ca(consul_ca), token=consul_token)
    except ValueError as exc:
        fail(str(exc))
    if leader_election and isinstance(src, ConsulSource):
        problem = lock_timing_problem(lock_ttl, lock_delay)
        if problem is not None:
            fail(problem)
    options.lock_ttl, options.lock_delay = lock_ttl, lock_delay
    options.leader_election = leader_election
    if shard and not (leader_election and isinstance(src, ConsulSource)):
        fail("--shard needs a consul:// source and leader election (the members meet in Consul)")
    options.shard = shard
    options.status_prefix = status_prefix or None
    audit = open_log(db)
    try:
        controller = Controller(src, audit, options)
        code = controller.run()
    except ValueError as exc:  # e.g. a non-loopback --http without a token
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot start the HTTP endpoint on {http}: {exc.strerror or exc}")
    finally:
        audit.close()
    raise typer.Exit(code)
