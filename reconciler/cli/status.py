"""`status`, `resume` and `audit`: what the fleet and the audit log say, and resuming a paused rollout."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from reconciler.cli.common import (
    ConsulCaOpt,
    ConsulTokenFileOpt,
    DbOpt,
    JsonOpt,
    SourceArg,
    SourceOpt,
    emit_json,
    err,
    fail,
    load_desired,
    open_log,
    out,
    row_json,
    source_of,
    time_text,
    token_from_file,
)
from reconciler.durations import seconds_text
from reconciler.vocabulary import ACTION_KINDS, ACTION_STATUSES, RUN_STATUSES

if TYPE_CHECKING:
    from reconciler.shards import View
    from reconciler.sources import ConsulSource, FileSource
    from reconciler.store import ControllerRow

# Each command imports Docker, the audit database and the models when it runs (reconciler/cli/common.py).


def _listed(values: frozenset[str]) -> str:
    return ", ".join(sorted(values))


def status(
    source: SourceArg = None,
    as_json: JsonOpt = False,
    db: DbOpt = None,
    source_opt: SourceOpt = None,
    consul_token_file: ConsulTokenFileOpt = None,
    consul_ca: ConsulCaOpt = None,
) -> None:
    """Per host: desired vs observed containers, drift, last action and its outcome, backoff state;
    and whether a controller is running on this source (its heartbeat in the audit database).

    When the source cannot be read or is invalid, the status is computed against the last document the
    controller applied (kept in the audit database), and says so. A host that cannot be observed has an
    unknown drift, never "none"; the backoff state of a controller that no longer runs is shown as
    history. Exit 0 when every host is observed and converged, 2 when some drift, 1 when some host
    could not be observed (or on error)."""
    from desired_state.configfiles import attach
    from desired_state.load import TopologyError, load_topology
    from reconciler.engines import Connections
    from reconciler.formatting import host_report, text_table
    from reconciler.one_pass import PassOptions, compute_plan
    from reconciler.pauses import pauses_for
    from reconciler.sources import SourceError
    from reconciler.store import ActionFilter

    audit = open_log(db, missing="empty")
    src = source_of(source, source_opt, token_from_file(consul_token_file), consul_ca)
    source_problem: str | None = None
    try:
        loaded = attach(load_topology(src.read(), source=src.describe(), fmt=src.fmt, base=src.base))
    except (SourceError, TopologyError) as exc:
        source_problem = str(exc)
        kept = audit.state.last_document(src.describe())
        if kept is None:
            audit.close()
            fail(f"{source_problem}; and no document from this source was ever applied")
        from reconciler.desired import load_kept  # the controller's module: only for this fallback

        loaded = load_kept(kept)
        err.print(
            f"warning: {source_problem}; showing the last applied document {kept.digest[:12]} "
            f"(applied {time_text(kept.last_applied)})",
            markup=False,
        )
    connections = Connections()
    try:
        desired, observed, the_plan = compute_plan(loaded, connections, audit, PassOptions())
        states = audit.state.host_states(desired.cluster)
        paused = pauses_for(src, audit).get(desired.cluster)
        controller = controller_report(audit.state.controllers(), src.describe(), datetime.now(UTC))
        owners = shard_view(src)
        hosts: list[dict[str, Any]] = []
        names = [h.name for h in desired.hosts] + [
            o.name for o in observed.hosts if desired.host(o.name) is None
        ]
        for name in names:
            wanted = desired.host(name)
            seen = observed.host(name)
            last = audit.actions(ActionFilter(host=name, limit=1))
            state = states.get(name)
            report = host_report(desired.cluster, name, the_plan, seen)
            hosts.append(
                {
                    "host": name,
                    "reachable": report["reachable"],
                    "error": seen.error if seen else None,
                    "desired": [s.name for s in wanted.specs] if wanted else [],
                    "observed": report["observed"],
                    "drift": report["drift"],
                    "last_action": last[0].to_dict() if last else None,
                    "owner": owners.owner(name) if owners is not None else None,
                    "controller_state": (
                        None if state is None else state.to_dict() | {"current": controller["running"]}
                    ),
                }
            )
    finally:
        connections.close()
        audit.close()
    code = status_code(hosts)
    if as_json:
        emit_json(
            {
                "rollout_paused": paused[0] if paused else None,
                "cluster": desired.cluster,
                "digest": loaded.digest,
                "source_problem": source_problem,
                "converged": code == 0,
                "controller": controller,
                "sharded": owners is not None,
                "hosts": hosts,
            }
        )
        raise typer.Exit(code)
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
        state_text = "-" if st is None else _state_text(st)
        drift_text = "unknown" if h["drift"] is None else (", ".join(h["drift"]) or "none")
        row = [h["host"], " ".join(h["desired"]) or "-", observed_text, drift_text, state_text, last_text]
        rows.append([*row, h["owner"] or "none"] if owners is not None else row)
    out.print(controller["summary"], markup=False, style=None if controller["running"] else "yellow")
    headers = ["host", "desired", "observed", "drift", "controller", "last action"]
    table = text_table([*headers, "owner"] if owners is not None else headers, rows).split("\n")
    out.print(table[0], markup=False)
    for line, h in zip(table[1:], hosts, strict=False):  # on a terminal: unknown magenta, drift yellow
        out.print(
            line, markup=False, style="magenta" if h["drift"] is None else "yellow" if h["drift"] else None
        )
    if paused:
        out.print(
            f"\nROLLOUT PAUSED since {time_text(paused[2])}: {paused[0]}\n"
            "(no server is touched until `consul-reconciler resume` or a new desired state)",
            markup=False,
        )
    raise typer.Exit(code)


def shard_view(src: FileSource | ConsulSource) -> View | None:
    """The members of the controllers sharing this source's hosts (run --shard), as their keys in Consul
    say now; None when none is a member (or the source is a file)."""
    import time

    from reconciler.consul_api import ConsulError
    from reconciler.membership import read_view
    from reconciler.sources import ConsulSource

    if not isinstance(src, ConsulSource):
        return None
    try:
        view = read_view(src.consul, src.address.key, time.monotonic())
    except ConsulError as exc:
        err.print(f"warning: the controllers' membership could not be read: {exc}", markup=False)
        return None
    return view if view.members else None


def status_code(hosts: list[dict[str, Any]]) -> int:
    """``plan``'s convention: 0 converged, 2 drift, 1 when some host's state is unknown."""
    if any(h["drift"] is None for h in hosts):
        return 1
    return 2 if any(h["drift"] for h in hosts) else 0


def controller_report(rows: list[ControllerRow], source: str, now: datetime) -> dict[str, Any]:
    """Whether a controller runs on ``source`` (from the heartbeats), and a line saying so."""
    mine = [r for r in rows if r.source == source]
    running = [r for r in mine if r.running(now)]
    latest = running[0] if running else mine[0] if mine else None
    if latest is None:
        summary = "controller: none has run on this source with this audit database"
    elif running:
        summary = (
            f"controller: running, {latest.identity} (version {latest.version}) since "
            f"{time_text(latest.started_at)} UTC, last heard {_ago(now, latest.last_seen)}"
        )
    else:
        how = (
            f"stopped at {time_text(latest.stopped_at)} UTC"
            if latest.stopped_at
            else f"not heard from since {time_text(latest.last_seen)} UTC ({_ago(now, latest.last_seen)}: "
            "killed, or its host down?)"
        )
        summary = (
            f"controller: NOT RUNNING; the last one, {latest.identity}, {how}; "
            "host states below are as it left them"
        )
    return {
        "running": bool(running),
        "identity": latest.identity if latest else None,
        "started_at": latest.started_at.isoformat() if latest else None,
        "last_seen": latest.last_seen.isoformat() if latest else None,
        "stopped_at": latest.stopped_at.isoformat() if latest and latest.stopped_at else None,
        "summary": summary,
    }


def _ago(now: datetime, then: datetime) -> str:
    return f"{seconds_text(max(0, round((now - then).total_seconds())))} ago"


def _state_text(st: dict[str, Any]) -> str:
    text = st["state"]
    if st["failures"]:
        retry = "retry " + _time_iso(st["retry_at"]) if st["current"] else "no retry: no controller runs"
        text += f" (failures {st['failures']}, {retry})"
    return text if st["current"] else f"{text} as of {_time_iso(st['updated_at'])}"


def _time_iso(value: str | None) -> str:
    return value.replace("T", " ")[:19] if value else ""


def resume(
    source: SourceArg = None,
    db: DbOpt = None,
    source_opt: SourceOpt = None,
    as_json: JsonOpt = False,
    consul_token_file: ConsulTokenFileOpt = None,
    consul_ca: ConsulCaOpt = None,
) -> None:
    """Resume a server rollout paused by a failed health gate (after fixing its cause).

    A paused rollout touches no server until this command, or until the desired state changes. With
    the desired state in Consul KV the pause is kept there too (KEY.pause), for every controller; this
    clears both."""
    from reconciler.consul_api import ConsulError
    from reconciler.pauses import pauses_for, resume_rollout

    token = token_from_file(consul_token_file)
    src = source_of(source, source_opt, token, consul_ca)
    loaded = load_desired(source, source_opt, token, consul_ca)
    cluster = loaded.topology.cluster
    audit = open_log(db)
    try:
        try:
            pause = resume_rollout(
                pauses_for(src, audit),
                audit,
                cluster,
                source=src.describe(),
                digest=loaded.digest,
                by="the CLI",
            )
        except ConsulError as exc:
            fail(str(exc))
        if pause is None:
            message = f"cluster {cluster}: no rollout is paused"
        else:
            message = (
                f"cluster {cluster}: rollout resumed (was paused since {time_text(pause[2])}: {pause[0]})"
            )
    finally:
        audit.close()
    if as_json:
        emit_json({"cluster": cluster, "resumed": pause is not None, "reason": pause[0] if pause else None})
    else:
        out.print(message, markup=False)


def audit_cmd(
    host: Annotated[str | None, typer.Option(help="Only actions on this host.")] = None,
    node: Annotated[str | None, typer.Option(help="Only actions on this Consul node.")] = None,
    kind: Annotated[
        str | None, typer.Option(help=f"Only actions of this kind: {_listed(ACTION_KINDS)}.")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(
            help=f"Only actions with this status ({_listed(ACTION_STATUSES)}); "
            f"with --runs, runs with this status ({_listed(RUN_STATUSES)})."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only rows started since: relative (90s, 15m, 2h, 3d, 1w) or an ISO time."),
    ] = None,
    run: Annotated[int | None, typer.Option(help="Only actions of this run (pass).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows (newest first).")] = 50,
    runs: Annotated[bool, typer.Option("--runs", help="List passes (runs) instead of actions.")] = False,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Query the audit log: who changed what, when, and why.

    Actions by default (newest first); with --runs, the passes, filtered by --status, --host (runs
    with an action on that host) and --since. An unknown --kind or --status is an error that lists
    the valid ones."""
    from reconciler.formatting import text_table
    from reconciler.store import ActionFilter, parse_since

    try:
        since_at = parse_since(since) if since else None
    except ValueError as exc:
        fail(f"--since: {exc}")
    if kind is not None and (runs or kind not in ACTION_KINDS):
        fail(
            "--kind filters actions, not runs"
            if runs
            else f"--kind {kind!r} is not an action kind; one of: {_listed(ACTION_KINDS)}"
        )
    valid = RUN_STATUSES if runs else ACTION_STATUSES
    if status is not None and status not in valid:
        what = "a run" if runs else "an action"
        fail(f"--status {status!r} is not {what} status; one of: {_listed(valid)}")
    log_db = open_log(db, missing="fail")
    try:
        if runs:
            run_rows = log_db.runs(limit=limit, status=status, since=since_at, host=host)
            if as_json:
                emit_json({"runs": [row_json(r) for r in run_rows]})
                return
            out.print(
                text_table(
                    ["run", "started", "status", "trigger", "digest", "summary / error"],
                    [
                        [
                            str(r.id),
                            time_text(r.started_at),
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
        emit_json({"actions": [row_json(r) for r in rows]})
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
                time_text(a.started_at),
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
