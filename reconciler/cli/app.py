"""The command line assembled: its commands in the order `--help` lists them, logging, and ``main``.

Exit codes: 0 success (for ``plan``: nothing to do), 1 error or not converged,
2 (``plan`` only) changes are pending.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Annotated, Any

import typer

from reconciler import __version__
from reconciler.cli.common import err, fail, out
from reconciler.cli.config_file import ConfigFileError, config_path, load_config
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
    add_completion=True,  # --install-completion and --show-completion: bash, zsh, fish, PowerShell
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


SHELLS = ("bash", "zsh", "fish")


def completion(
    shell: Annotated[str, typer.Argument(help="bash, zsh or fish.", show_default=False)],
) -> None:
    """Print the shell completion script for SHELL; e.g. in ~/.bashrc:
    eval "$(consul-reconciler completion bash)" (--install-completion installs it for this shell)."""
    if shell not in SHELLS:
        fail(f"no completion for {shell!r}; one of: {', '.join(SHELLS)}")
    from typer._completion_shared import get_completion_script

    script = get_completion_script(
        prog_name="consul-reconciler", complete_var="_CONSUL_RECONCILER_COMPLETE", shell=shell
    )
    sys.stdout.write(script if script.endswith("\n") else script + "\n")


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
app.command()(completion)


GLOBAL_FLAGS = ("-v", "--verbose")
GLOBAL_VALUED = ("--log-format",)


def global_options_first(argv: list[str]) -> list[str]:
    """``argv`` with the global options (-v, --log-format) moved before the command, so that they may
    be given after it too, as ``docker ps -q --log-level debug`` or ``consul members -http-addr``
    users type them: ``consul-reconciler plan t.yaml -v`` is ``consul-reconciler -v plan t.yaml``.
    Nothing after ``--`` moves."""
    moved: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            rest += argv[index:]
            break
        if arg in GLOBAL_FLAGS:
            moved.append(arg)
        elif arg in GLOBAL_VALUED and index + 1 < len(argv):
            moved += [arg, argv[index + 1]]
            index += 1
        elif arg.split("=", 1)[0] in GLOBAL_VALUED:
            moved.append(arg)
        else:
            rest.append(arg)
        index += 1
    return moved + rest


def _defaults(argv: list[str]) -> dict[str, Any]:
    """run's settings from its configuration file (--config or $CONSUL_RECONCILER_CONFIG), as the
    command line's default_map: flags and environment variables override them."""
    command = argv[next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv)) :][:1]
    if command != ["run"]:
        return {}
    path = config_path(argv)
    if path is None:
        return {}
    group: Any = typer.main.get_command(app)
    try:
        return {"run": load_config(path, group.commands["run"])}
    except ConfigFileError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(1)


def main() -> None:
    """The command line; no input ends in a traceback (with -v, an unexpected failure shows one)."""
    try:
        argv = global_options_first(sys.argv[1:])
        app(args=argv, prog_name="consul-reconciler", default_map=_defaults(argv))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a failure no command handled: one line, the detail with -v
        if logging.getLogger("consul_reconciler").isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        what = type(exc).__name__ + (f": {first}" if first else "")
        err.print(f"error: {what} (unexpected; -v shows where)", markup=False)
        sys.exit(1)
