"""What every command of the command line shares: its options, its output, opening the audit log and
reading the desired state."""

from __future__ import annotations

import atexit
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer

from reconciler.consul_settings import resolve_ca

if TYPE_CHECKING:
    from rich.console import Console

    from desired_state.load import Loaded
    from reconciler.sources import ConsulSource, FileSource
    from reconciler.store import AuditLog

# What a command needs beyond typer (the desired state's models, the sources, Docker, the audit
# database) is imported by the command, or by the helper here that needs it, when it runs: building
# the command line (`--help`, `--version`, completion) imports none of it. tests/unit/test_cli_imports.py
# keeps it so.


class LazyConsole:
    """rich's Console, made the first time something is printed (importing rich is not free, and
    ``--help`` never prints through it)."""

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr

    @cached_property
    def console(self) -> Console:
        from rich.console import Console

        return Console(stderr=self._stderr, highlight=False, soft_wrap=True)

    def print(self, *objects: Any, **options: Any) -> None:
        self.console.print(*objects, **options)


out = LazyConsole()
err = LazyConsole(stderr=True)

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
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Audit database: a SQLAlchemy URL or a SQLite file path. "
        "Default: $CONSUL_RECONCILER_DB, else ~/.local/state/consul-reconciler/audit.db.",
        envvar="CONSUL_RECONCILER_DB",  # read here too, so that it wins over run's --config file
        show_default=False,
    ),
]
ConsulCaOpt = Annotated[
    Path | None,
    typer.Option(
        "--consul-ca",
        metavar="FILE",
        help="CA file (PEM) for Consul over HTTPS: a consul+https:// source (or $CONSUL_HTTP_ADDR https://) "
        "and agents serving HTTPS (consul.tls). Default: $CONSUL_CACERT, else the system CAs.",
        show_default=False,
    ),
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


def fail(message: str, code: int = 1) -> NoReturn:
    """``error: MESSAGE`` on stderr, and the command ends with ``code``."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def fail_line(message: str, code: int = 1) -> NoReturn:
    """``fail``, with the message on one line (the kv commands' errors are each one line)."""
    fail(" ".join(message.split()), code)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def warn(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# Every --json output is one object: its format_version first (raised when a key changes meaning or
# goes away; new keys do not raise it), then the same key names for the same things in every command
# (README, "JSON output"): cluster, host, container, run_id, digest, key, modify_index, errors, warnings.
JSON_FORMAT_VERSION = 1


def row_json(row: Any) -> dict[str, Any]:
    """A stored row (run, action, snapshot, document) as --json shows it: the cluster ID as ``cluster``,
    as every other output names it."""
    return {("cluster" if k == "cluster_id" else k): v for k, v in row.to_dict().items()}


def emit_json(data: dict[str, Any]) -> None:
    document = {"format_version": JSON_FORMAT_VERSION, **data}
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def time_text(value: Any) -> str:
    """A datetime as the tables print it (UTC, to the second); empty for none."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def token_from_file(path: Path | None) -> str | None:
    """The token in ``--consul-token-file``, when given."""
    return None if path is None else read_token_file(path, "--consul-token-file", fail)


def source_of(
    arg: str | None, opt: str | None = None, token: str | None = None, ca: Path | None = None
) -> FileSource | ConsulSource:
    from reconciler.sources import open_source

    spec = opt or arg
    if arg and opt and arg != opt:
        fail(f"two sources given ({arg} and --source {opt}); give one")
    if not spec:
        fail(
            "no desired state given: pass a topology file or consul://HOST:PORT/KEY (or set "
            "$CONSUL_RECONCILER_SOURCE)"
        )
    try:
        if ca is not None and not ca.is_file():
            fail(f"--consul-ca {ca}: no such file")
        return open_source(spec, ca=resolve_ca(str(ca) if ca else None), token=token)
    except ValueError as exc:
        fail(str(exc))


def load_desired(
    arg: str | None, opt: str | None = None, token: str | None = None, ca: Path | None = None
) -> Loaded:
    from desired_state.configfiles import attach
    from desired_state.load import TopologyError, load_topology
    from reconciler.sources import SourceError

    src = source_of(arg, opt, token, ca)
    try:
        data = src.read()
    except SourceError as exc:
        fail(str(exc))
    try:
        return attach(load_topology(data, source=src.describe(), fmt=src.fmt, base=src.base))
    except TopologyError as exc:
        err.print(f"error: {src.describe()} is not a valid topology:", markup=False)
        for issue in exc.issues:
            err.print(f"  {issue}", markup=False)
        raise typer.Exit(1) from None


# Plan lines coloured by their symbol, as terraform and git colour theirs: + create, ~ replace, - remove,
# ! blocked, ? unreachable, > start. rich colours only a terminal, and never with $NO_COLOR set.
PLAN_STYLES = {
    "+": "green",
    "~": "yellow",
    "-": "red",
    "!": "bold red",
    "?": "magenta",
    ">": "cyan",
    "=": "blue",
}
LINE_STYLES = {"REFUSED:": "bold red", "WARNING:": "yellow"}


def print_plan(text: str) -> None:
    """A plan as format_plan wrote it, each line coloured by what it says (on a terminal only)."""
    for line in text.split("\n"):
        symbol = line[2:3] if line.startswith("  ") and line[3:4] == " " else ""
        style = PLAN_STYLES.get(symbol) or next(
            (style for head, style in LINE_STYLES.items() if line.startswith(head)), None
        )
        out.print(line, style=style, markup=False)


def print_warnings(loaded: Loaded) -> None:
    for warning in loaded.warnings:
        err.print(f"warning: {warning}", markup=False)


Missing = Literal["create", "fail", "empty"]


def open_log(db: str | None, *, missing: Missing = "create", code: int = 1) -> AuditLog:
    """The audit log at ``--db`` (else $CONSUL_RECONCILER_DB, else the default file).

    When it is a SQLite file that does not exist: ``create`` makes it (the commands that write:
    apply, run, resume); ``fail`` is an error naming the file (audit, snapshots, kv history: a query
    of nothing); ``empty`` reads as an empty log without creating anything (plan, status). A failure
    ends the command with ``code``."""

    from reconciler.store import sqlite_path

    def failed(message: str) -> NoReturn:
        fail(message, code)

    if missing != "create":
        path = sqlite_path(_url_of(db, failed))
        if path is not None and not path.exists():
            if missing == "fail":
                failed(
                    f"no audit database at {path}: nothing was ever recorded there (apply and run "
                    "write it); give the right one with --db or $CONSUL_RECONCILER_DB"
                )
            scratch = Path(tempfile.mkdtemp(prefix="consul-reconciler-empty-"))
            atexit.register(shutil.rmtree, scratch, True)
            return _open_audit(str(scratch / "audit.db"), failed)
    return _open_audit(db, failed)


def _url_of(db: str | None, fail: Callable[[str], NoReturn]) -> str:
    from reconciler.store import default_database_url, normalize_url

    try:
        return normalize_url(db) if db else default_database_url()
    except ValueError as exc:
        fail(f"--db: {exc}")


def safe_url(url: str) -> str:
    """A database URL with its password hidden."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def _open_audit(db: str | None, fail: Callable[[str], NoReturn]) -> AuditLog:
    """The audit log at ``--db`` (else $CONSUL_RECONCILER_DB, else the default file); ``fail`` on error."""
    from reconciler.store import AuditLog

    url = _url_of(db, fail)
    try:
        return AuditLog(url)
    except Exception as exc:
        fail(f"cannot open the audit database {safe_url(url)}: {exc}")


def read_token_file(path: Path, option: str, fail: Callable[[str], NoReturn]) -> str:
    """The token in ``path`` (stripped); ``fail`` names ``option`` when it is missing, unreadable or empty.
    The token itself is never part of a message."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        fail(f"{option} {path}: no such file")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{option} {path}: cannot read: {getattr(exc, 'strerror', None) or type(exc).__name__}")
    if not token:
        fail(f"{option} {path} is empty")
    return token
