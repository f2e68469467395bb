"""`version`, `validate` and `render`: the desired state, read and shown; nothing is touched."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from reconciler import __version__
from reconciler.cli.common import (
    ConsulCaOpt,
    ConsulTokenFileOpt,
    JsonOpt,
    SourceArg,
    SourceOpt,
    emit_json,
    err,
    fail,
    load_desired,
    out,
    print_warnings,
    source_of,
    token_from_file,
)

# The models are imported by each command when it runs (reconciler/cli/common.py says why).


def version() -> None:
    """Print the version."""
    out.print(__version__)


def validate(
    source: SourceArg = None,
    as_json: JsonOpt = False,
    source_opt: SourceOpt = None,
    consul_token_file: ConsulTokenFileOpt = None,
    consul_ca: ConsulCaOpt = None,
) -> None:
    """Check a topology file: every error with its place, secret references resolved, the hosts' Docker
    TLS files readable and PEM (relative paths from the file's folder). Exit 1 on errors."""
    from desired_state.configfiles import attach
    from desired_state.load import TopologyError, load_topology
    from desired_state.secrets import check_secrets
    from desired_state.tlsfiles import tls_file_issues
    from reconciler.formatting import counted
    from reconciler.sources import SourceError

    data_issues: list[dict[str, Any]] = []
    src = source_of(source, source_opt, token_from_file(consul_token_file), consul_ca)
    try:
        loaded = attach(load_topology(src.read(), source=src.describe(), fmt=src.fmt, base=src.base))
    except SourceError as exc:
        fail(str(exc))
    except TopologyError as exc:
        if as_json:
            emit_json({"valid": False, "errors": [i.to_dict() for i in exc.issues], "warnings": []})
        else:
            err.print(f"{src.describe()}: {len(exc.issues)} error(s)", markup=False)
            for issue in exc.issues:
                err.print(f"  error: {issue}", markup=False)
        raise typer.Exit(1) from None
    secret_issues = check_secrets(loaded.topology) + tls_file_issues(loaded)
    data_issues = [i.to_dict() for i in secret_issues]
    if as_json:
        emit_json(
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
                f"{counted(len(t.hosts), 'host')} ({counted(len(t.servers), 'server')}, "
                f"{counted(len(t.hosts) - len(t.servers), 'client')})",
                markup=False,
            )
    if secret_issues:
        raise typer.Exit(1)


def render(
    source: SourceArg = None,
    host: Annotated[str | None, typer.Option("--host", help="Only this host.")] = None,
    source_opt: SourceOpt = None,
    as_json: JsonOpt = False,
    consul_token_file: ConsulTokenFileOpt = None,
    consul_ca: ConsulCaOpt = None,
) -> None:
    """Show each host's containers as the equivalent `docker run` lines (no engine is contacted)."""
    from desired_state.render import render as render_fleet
    from reconciler.formatting import docker_run_line

    loaded = load_desired(source, source_opt, token_from_file(consul_token_file), consul_ca)
    print_warnings(loaded)
    fleet = render_fleet(loaded.topology)
    hosts = [h for h in fleet.hosts if host is None or h.name == host]
    if host is not None and not hosts:
        names = ", ".join(h.name for h in fleet.hosts)
        fail(f"no host named {host!r} in {source or source_opt} (hosts: {names})")
    if as_json:
        emit_json(
            {
                "cluster": fleet.cluster,
                "datacenter": fleet.datacenter,
                "hosts": [
                    {
                        "host": h.name,
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
