"""``consul-reconciler kv ...``: the desired topology kept in Consul KV, edited safely.

Every write is a check-and-set on the ModifyIndex that was read, so two operators can never
silently overwrite each other: the second one gets a conflict and nothing is written.

- ``kv push FILE``: validate FILE, then create or update the key (CAS); unchanged bytes are not written.
- ``kv pull [-o FILE]``: the document stored at the key, byte for byte.
- ``kv edit``: open the stored document in ``$VISUAL``/``$EDITOR``, validate, write back with CAS.
- ``kv history`` / ``kv diff A B``: the valid documents the controller applied (the audit database).

Exit codes: 0 success, 1 error (one line on stderr naming the key or address; for an invalid
document, every issue with its path). The ACL token (``--token-file`` or ``$CONSUL_HTTP_TOKEN``)
is sent as a header and never printed.
"""

from __future__ import annotations

import difflib
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from desired_state.load import Loaded, TopologyError, digest_of, load_topology
from reconciler.cli.common import DbOpt, JsonOpt, emit_json, fail, open_log, read_token_file, time_text
from reconciler.consul_api import Consul, ConsulError, KVEntry
from reconciler.consul_settings import FORMS, TOKEN_ENV, ConsulAddress, is_consul_url, scheme_of
from reconciler.formatting import text_table
from reconciler.store import DocumentRow

SOURCE_ENV = "CONSUL_RECONCILER_SOURCE"
DEFAULT_EDITOR = "vi"

kv_app = typer.Typer(
    name="kv",
    help=(
        "The topology document kept in Consul KV: push a file, pull it, edit it in place, and look "
        "at the documents the controller applied. Every write is a check-and-set on the ModifyIndex "
        "that was read: a concurrent change is reported as a conflict and never overwritten."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

ConsulOpt = Annotated[
    str | None,
    typer.Option(
        "--consul",
        metavar="URL",
        help=f"The key: {FORMS}. Default: ${SOURCE_ENV} when it is such a URL.",
        show_default=False,
    ),
]
CaOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca",
        metavar="FILE",
        help="CA bundle (PEM) that signed Consul's certificate (consul+https:// only). "
        "Default: the system CAs.",
        show_default=False,
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        metavar="FILE",
        help=f"File holding the Consul ACL token. Default: ${TOKEN_ENV}. The token is never printed.",
        show_default=False,
    ),
]


# --- output helpers -------------------------------------------------------------------------------------


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _warn(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _fail(message: str, code: int = 1) -> NoReturn:
    fail(_one_line(message), code)  # each kv error is one line


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- the Consul address ---------------------------------------------------------------------------------


def _address(consul_url: str | None, ca: Path | None, token_file: Path | None) -> ConsulAddress:
    """The key to work on: --consul, else $CONSUL_RECONCILER_SOURCE when it is a consul:// URL."""
    url = consul_url
    if url is None:
        env = os.environ.get(SOURCE_ENV, "").strip()
        if not env:
            _fail(f"no Consul key given: use --consul consul://HOST:PORT/KEY (or set ${SOURCE_ENV})")
        if not is_consul_url(env):
            _fail(
                f"no Consul key given: ${SOURCE_ENV} is {env!r}, not a consul://HOST:PORT/KEY URL; "
                "use --consul"
            )
        url = env
    if ca is not None and scheme_of(url) != "https":
        _fail(f"--ca is only used with consul+https:// addresses, not {url!r}")
    if ca is not None and not ca.is_file():
        _fail(f"--ca {ca}: no such file")
    token = read_token_file(token_file, "--token-file", _fail) if token_file is not None else None
    try:
        return ConsulAddress.parse(url, ca=str(ca) if ca is not None else None, token=token)
    except (ValueError, ConsulError) as exc:
        _fail(str(exc))


def _connect(address: ConsulAddress) -> Consul:
    return Consul(address)


def _get(consul: Consul, key: str) -> KVEntry | None:
    try:
        _, entry = consul.get(key)
    except ConsulError as exc:
        _fail(str(exc))
    return entry


def _value(entry: KVEntry) -> bytes:
    return entry.value if entry.value is not None else b""


def _validate(data: bytes, source: str, fmt: str | None) -> Loaded | list[str]:
    """The loaded topology, or the issues (each with its path) that make it invalid."""
    try:
        return load_topology(data, source=source, fmt=fmt)
    except TopologyError as exc:
        return [str(issue) for issue in exc.issues]


def _print_issues(head: str, issues: list[str]) -> None:
    _warn(f"error: {head}")
    for issue in issues:
        _warn(f"  {issue}")


def _print_warnings(loaded: Loaded) -> None:
    for warning in loaded.warnings:
        _warn(f"warning: {warning}")


def _current_index(consul: Consul, key: str) -> str:
    """The key's ModifyIndex now, for messages ("deleted" when it is gone, "?" when unknown)."""
    try:
        _, entry = consul.get(key)
    except ConsulError:
        return "?"
    return "deleted" if entry is None else str(entry.modify_index)


# --- push -----------------------------------------------------------------------------------------------


@kv_app.command()
def push(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="Topology file (YAML or JSON) to store at the key.")
    ],
    consul_url: ConsulOpt = None,
    ca: CaOpt = None,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate FILE and store it at the key, with a check-and-set on the ModifyIndex read just before.

    An invalid FILE writes nothing (every issue is printed with its path). The key is created when
    absent (cas=0) and updated otherwise (cas=its ModifyIndex); identical bytes are not written.
    If someone else writes the key between the read and the write, Consul refuses the write: that is
    a conflict, nothing is overwritten, exit 1 (pull, merge, push again). There is no --force.
    """
    address = _address(consul_url, ca, token_file)
    key, where = address.key, address.url()
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        _fail(f"{file}: no such file")
    except IsADirectoryError:
        _fail(f"{file}: is a directory; give the topology file")
    except OSError as exc:
        _fail(f"{file}: cannot read: {exc.strerror or exc}")
    checked = _validate(data, str(file), "json" if file.suffix.lower() == ".json" else None)
    if isinstance(checked, list):
        _print_issues(f"{file} is not a valid topology; nothing was written to {where}:", checked)
        raise typer.Exit(1)
    _print_warnings(checked)

    consul = _connect(address)
    entry = _get(consul, key)
    if entry is not None and _value(entry) == data:
        result: dict[str, Any] = {
            "key": where,
            "result": "unchanged",
            "old_index": entry.modify_index,
            "new_index": entry.modify_index,
            "digest": checked.digest,
        }
        if as_json:
            emit_json(result)
        else:
            _say(
                f"unchanged: {where} already holds {file} (ModifyIndex {entry.modify_index}, "
                f"digest {checked.digest[:12]}); nothing written"
            )
        return
    cas = entry.modify_index if entry is not None else 0
    try:
        written = consul.put(key, data, cas=cas)
    except ConsulError as exc:
        _fail(f"{exc}; {where} may be unchanged, run `kv pull` to see")
    if not written:
        now = _current_index(consul, key)
        if entry is None:
            _fail(
                f"conflict: {where} was created by someone else while pushing (ModifyIndex 0 -> {now}); "
                "nothing was overwritten: pull it, merge your changes and push again"
            )
        _fail(
            f"conflict: {where} changed in Consul while pushing (ModifyIndex {cas} -> {now}); "
            "nothing was overwritten: pull it, merge your changes and push again"
        )
    after = _get(consul, key)
    new_index = after.modify_index if after is not None else None
    result = {
        "key": where,
        "result": "created" if entry is None else "updated",
        "old_index": cas if entry is not None else None,
        "new_index": new_index,
        "digest": checked.digest,
    }
    if as_json:
        emit_json(result)
    elif entry is None:
        _say(f"created: {where} (ModifyIndex {new_index}, digest {checked.digest[:12]}) from {file}")
    else:
        _say(f"updated: {where} (ModifyIndex {cas} -> {new_index}, digest {checked.digest[:12]}) from {file}")


# --- pull -----------------------------------------------------------------------------------------------


@kv_app.command()
def pull(
    consul_url: ConsulOpt = None,
    ca: CaOpt = None,
    token_file: TokenFileOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", metavar="FILE", help="Write the document to FILE instead of printing it."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the document stored at the key, byte for byte (or write it to -o FILE).

    With --json: the key, its ModifyIndex, the document's digest and its text. A missing key is an
    error (exit 1).
    """
    address = _address(consul_url, ca, token_file)
    where = address.url()
    entry = _get(_connect(address), address.key)
    if entry is None:
        _fail(f"{where}: no such key in Consul (create it with `kv push FILE`)")
    data = _value(entry)
    if output is not None:
        try:
            output.write_bytes(data)
        except OSError as exc:
            _fail(f"-o {output}: cannot write: {exc.strerror or exc}")
        if as_json:
            emit_json(
                {
                    "key": where,
                    "modify_index": entry.modify_index,
                    "digest": digest_of(data),
                    "file": str(output),
                }
            )
        else:
            _say(f"wrote {output}: {len(data)} bytes from {where} (ModifyIndex {entry.modify_index})")
        return
    if as_json:
        emit_json(
            {
                "key": where,
                "modify_index": entry.modify_index,
                "digest": digest_of(data),
                "document": data.decode("utf-8", errors="replace"),
            }
        )
        return
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


# --- edit -----------------------------------------------------------------------------------------------


def _editor_command() -> list[str]:
    """$VISUAL, else $EDITOR, else vi; the variable may hold arguments (split like a shell would)."""
    for name in ("VISUAL", "EDITOR"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                argv = shlex.split(value)
            except ValueError as exc:
                _fail(f"${name} {value!r} cannot be split into a command: {exc}")
            if argv:
                return argv
    return [DEFAULT_EDITOR]


@kv_app.command()
def edit(
    consul_url: ConsulOpt = None,
    ca: CaOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Edit the document at the key in $VISUAL or $EDITOR (default vi), then write it back safely.

    The document and its ModifyIndex are read, written to a temporary .yaml file and the editor is
    run on it (no shell; the variable may carry arguments, e.g. EDITOR="code --wait"). Afterwards:
    an unchanged file writes nothing (exit 0); an invalid one prints every issue and exits 1; else
    it is written with cas=<the ModifyIndex read before editing>. If the key changed in Consul in the
    meantime, nothing is written and exit is 1 — never a lost update. Whenever nothing was written
    after you changed the file, the temporary file is kept and its path printed, so no edit is lost.
    """
    address = _address(consul_url, ca, token_file)
    key, where = address.key, address.url()
    consul = _connect(address)
    entry = _get(consul, key)
    if entry is None:
        _fail(f"{where}: no such key in Consul (create it with `kv push FILE`)")
    original = _value(entry)
    read_index = entry.modify_index
    argv = _editor_command()

    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in key.rsplit("/", 1)[-1])[:40] or "topology"
    fd, name = tempfile.mkstemp(prefix=f"consul-reconciler-{stem}-", suffix=".yaml")
    path = Path(name)
    with os.fdopen(fd, "wb") as handle:
        handle.write(original)

    def kept(message: str) -> NoReturn:
        _fail(f"{message}; your edit is kept in {path}; nothing was written")

    try:
        status = subprocess.run([*argv, str(path)], check=False).returncode
    except OSError as exc:
        path.unlink(missing_ok=True)
        _fail(f"cannot run the editor {argv[0]!r}: {exc.strerror or exc}; nothing was written")
    try:
        edited = path.read_bytes()
    except OSError as exc:
        _fail(f"cannot read the edited file {path}: {exc.strerror or exc}; nothing was written")
    if status != 0:
        if edited == original:
            path.unlink(missing_ok=True)
            _fail(f"the editor {argv[0]!r} exited with status {status}; nothing was written to {where}")
        kept(f"the editor {argv[0]!r} exited with status {status}")
    if edited == original:
        path.unlink(missing_ok=True)
        _say(f"no change: {where} left as it was (ModifyIndex {read_index})")
        return

    checked = _validate(edited, f"{where} (edited in {path})", None)
    if isinstance(checked, list):
        _print_issues(
            f"your edit of {where} is not a valid topology; nothing was written; "
            f"your edit is kept in {path}:",
            checked,
        )
        raise typer.Exit(1)
    _print_warnings(checked)

    try:
        written = consul.put(key, edited, cas=read_index)
    except ConsulError as exc:
        kept(str(exc))
    if not written:
        _fail(
            f"{where} changed in Consul since you opened it (ModifyIndex {read_index} -> "
            f"{_current_index(consul, key)}); your edit is kept in {path}; nothing was written"
        )
    path.unlink(missing_ok=True)
    after = _current_index(consul, key)
    _say(f"updated: {where} (ModifyIndex {read_index} -> {after}, digest {checked.digest[:12]})")


# --- history and diff (the audit database) --------------------------------------------------------------


@kv_app.command()
def history(
    consul_url: Annotated[
        str | None,
        typer.Option(
            "--consul",
            metavar="URL",
            help="Only documents applied from this key (consul://HOST:PORT/KEY).",
            show_default=False,
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Only documents of this source as the audit log names it: file:PATH (a bare PATH "
            "is tried as file:PATH too) or consul://HOST:PORT/KEY.",
            show_default=False,
        ),
    ] = None,
    db: DbOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many documents.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List the valid desired documents the controller applied, newest first.

    Columns: id, digest (first 12 characters), source, cluster, first seen, last applied (UTC).
    Without --consul or --source every source is listed. Use an id or digest with `kv diff`.
    """
    if consul_url is not None and source is not None:
        _fail("give --consul or --source, not both")
    wanted = consul_url if consul_url is not None else source
    if wanted is not None and is_consul_url(wanted):
        try:
            wanted = ConsulAddress.parse(wanted, token="").url()  # the form the controller records
        except ValueError as exc:
            _fail(str(exc))
    elif consul_url is not None:
        _fail(f"--consul {consul_url!r}: expected {FORMS}")
    log = open_log(db)
    try:
        rows = log.state.documents(wanted, limit=limit)
        if not rows and wanted is not None and "://" not in wanted and not wanted.startswith("file:"):
            wanted = f"file:{wanted}"  # a bare path: file sources are recorded as file:PATH
            rows = log.state.documents(wanted, limit=limit)
    finally:
        log.close()
    if as_json:
        emit_json([r.to_dict() for r in rows])
        return
    if not rows:
        _say("no kept documents" + (f" for {wanted}" if wanted else ""))
        return
    _say(
        text_table(
            ["id", "digest", "source", "cluster", "first seen", "last applied"],
            [
                [
                    str(r.id),
                    r.digest[:12],
                    r.source,
                    r.cluster_id,
                    time_text(r.first_seen),
                    time_text(r.last_applied),
                ]
                for r in rows
            ],
        )
    )


def _label(row: DocumentRow) -> str:
    return f"#{row.id} {row.digest[:12]} {row.source} (first seen {time_text(row.first_seen)})"


@kv_app.command()
def diff(
    a: Annotated[str, typer.Argument(metavar="A", help="A kept document: its id or a digest prefix (4+).")],
    b: Annotated[str, typer.Argument(metavar="B", help="The other kept document: id or digest prefix.")],
    db: DbOpt = None,
) -> None:
    """Unified diff of two kept documents (from A to B); see `kv history` for ids and digests.

    Exit 0 when they are identical (says so) and also when they differ (the diff is printed);
    exit 1 when A or B cannot be found or is ambiguous.
    """
    log = open_log(db)
    try:
        docs: list[DocumentRow] = []
        for ref in (a, b):
            try:
                docs.append(log.state.find_document(ref.strip()))
            except KeyError as exc:
                _fail(str(exc.args[0]) if exc.args else f"no kept document {ref!r}")
    finally:
        log.close()
    first, second = docs
    if first.document == second.document:
        _say(f"identical: {_label(first)} and {_label(second)}")
        return
    lines = difflib.unified_diff(
        first.document.splitlines(keepends=True),
        second.document.splitlines(keepends=True),
        fromfile=_label(first),
        tofile=_label(second),
    )
    for line in lines:
        sys.stdout.write(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    sys.stdout.flush()
