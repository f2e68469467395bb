"""The command line assembled: its commands in the order `--help` lists them, logging, and ``main``.

Exit codes: 0 success (for ``plan``: nothing to do), 1 error or not converged,
2 (``plan`` only) changes are pending.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Annotated

import typer

from reconciler import __version__
from reconciler.cli.common import err, fail, out
from reconciler.cli.converge import apply, plan, run
from reconciler.cli.desired import render, validate, version
from reconciler.cli.kv import kv_app
from reconciler.cli.snapshots import snapshots_cmd
from reconciler.cli.status import audit_cmd, resume, status
from reconciler.cli.takeover import import_cmd
from reconciler.logs import setup_logging

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


def _print_version(value: bool) -> None:
    if value:
        out.print(f"consul-reconciler {__version__}", markup=False)
        raise typer.Exit()


@app.callback()
def _root(
    log_format: Annotated[
        str, typer.Option("--log-format", help="Log lines as 'text' (default) or 'json' (one object a line).")
    ] = "text",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
    show_version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    if log_format not in ("text", "json"):
        fail(f"--log-format must be 'text' or 'json', not {log_format!r}")
    setup_logging(log_format, logging.DEBUG if verbose else logging.INFO)


for command in (version, validate, render):
    app.command()(command)
app.command("import")(import_cmd)
for command in (plan, apply, run, status, resume):
    app.command()(command)
app.command("audit")(audit_cmd)
app.command("snapshots")(snapshots_cmd)
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
