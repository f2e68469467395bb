"""``consul-reconciler kv ...``: the desired topology kept in Consul KV, edited safely.

Every write is a check-and-set on the ModifyIndex that was read, so two operators can never
silently overwrite each other: the second one gets a conflict and nothing is written.

- ``kv push FILE``: validate FILE, then create or update the key (CAS); unchanged bytes are not written.
- ``kv pull [-o FILE]``: the document stored at the key, byte for byte.
- ``kv edit``: open the stored document in ``$VISUAL``/``$EDITOR``, validate, write back with CAS.
- ``kv history`` / ``kv diff A B``: the valid documents the controller applied (the audit database).

Exit codes: 0 success, 1 error (one line on stderr naming the key or address; for an invalid
document, every issue with its path); ``kv diff`` as diff(1): 0 identical, 1 different, 2 error.
The ACL token (``--token-file`` or ``$CONSUL_HTTP_TOKEN``) is sent as a header and never printed.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from reconciler.cli.common import JsonOpt, emit_json, fail_line, read_token_file, say, warn
from reconciler.cli.kv_history import diff, history
from reconciler.consul_settings import (
    FORMS,
    TOKEN_ENV,
    ConsulAddress,
    ConsulError,
    is_consul_url,
    resolve_ca,
)

if TYPE_CHECKING:
    from desired_state.load import Issue, Loaded
    from reconciler.consul_api import Consul, KVEntry

# The Consul client and the models are imported where they are used (reconciler/cli/common.py says why).

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
        "--source",
        metavar="URL",
        help=f"The key: {FORMS}. Default: ${SOURCE_ENV} when it is such a URL.",
        show_default=False,
    ),
]
CaOpt = Annotated[
    Path | None,
    typer.Option(
        "--consul-ca",
        "--ca",
        metavar="FILE",
        help="CA bundle (PEM) that signed Consul's certificate (HTTPS only), as for every command. "
        "Default: $CONSUL_CACERT, else the system CAs.",
        show_default=False,
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--consul-token-file",
        "--token-file",
        metavar="FILE",
        help=f"File holding the Consul ACL token, as for every command. Default: ${TOKEN_ENV}, then "
        "$CONSUL_HTTP_TOKEN_FILE. The token is never printed.",
        show_default=False,
    ),
]


# --- the Consul address ---------------------------------------------------------------------------------


def _address(consul_url: str | None, ca: Path | None, token_file: Path | None) -> ConsulAddress:
    """The key to work on: --consul, else $CONSUL_RECONCILER_SOURCE when it is a consul:// URL."""
    url = consul_url
    if url is None:
        env = os.environ.get(SOURCE_ENV, "").strip()
        if not env:
            fail_line(f"no Consul key given: use --consul consul://HOST:PORT/KEY (or set ${SOURCE_ENV})")
        if not is_consul_url(env):
            fail_line(
                f"no Consul key given: ${SOURCE_ENV} is {env!r}, not a consul://HOST:PORT/KEY URL; "
                "use --consul"
            )
        url = env
    if ca is not None and not ca.is_file():
        fail_line(f"--consul-ca {ca}: no such file")
    token = read_token_file(token_file, "--consul-token-file", fail_line) if token_file is not None else None
    try:
        address = ConsulAddress.parse(url, ca=resolve_ca(ca), token=token)
    except (ValueError, ConsulError) as exc:
        fail_line(str(exc))
    if ca is not None and address.scheme != "https":
        fail_line(f"--consul-ca is only used with Consul over HTTPS, not {address.url()!r}")
    return address


def _connect(address: ConsulAddress) -> Consul:
    from reconciler.consul_api import Consul

    return Consul(address)


def _get(consul: Consul, key: str) -> KVEntry | None:
    try:
        _, entry = consul.get(key)
    except ConsulError as exc:
        fail_line(str(exc))
    return entry


def _value(entry: KVEntry) -> bytes:
    return entry.value if entry.value is not None else b""


def _validate(data: bytes, source: str, fmt: str | None) -> Loaded | list[Issue]:
    """The loaded topology, or the issues (each with its path) that make it invalid."""
    from desired_state.configfiles import attach
    from desired_state.load import TopologyError, load_topology

    try:
        return attach(load_topology(data, source=source, fmt=fmt))
    except TopologyError as exc:
        return list(exc.issues)


def _print_issues(head: str, issues: list[Issue]) -> None:
    warn(f"error: {head}")
    for issue in issues:
        warn(f"  {issue}")


def _print_warnings(loaded: Loaded) -> None:
    for warning in loaded.warnings:
        warn(f"warning: {warning}")


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
        fail_line(f"{file}: no such file")
    except IsADirectoryError:
        fail_line(f"{file}: is a directory; give the topology file")
    except OSError as exc:
        fail_line(f"{file}: cannot read: {exc.strerror or exc}")
    checked = _validate(data, str(file), "json" if file.suffix.lower() == ".json" else None)
    if isinstance(checked, list):
        if as_json:  # a program asked: the errors as data, on stdout, like every other outcome
            emit_json({"key": where, "result": "invalid", "errors": [i.to_dict() for i in checked]})
        else:
            _print_issues(f"{file} is not a valid topology; nothing was written to {where}:", checked)
        raise typer.Exit(1)
    _print_warnings(checked)

    consul = _connect(address)
    entry = _get(consul, key)
    if entry is not None and _value(entry) == data:
        result: dict[str, Any] = {
            "key": where,
            "result": "unchanged",
            "previous_modify_index": entry.modify_index,
            "modify_index": entry.modify_index,
            "digest": checked.digest,
        }
        if as_json:
            emit_json(result)
        else:
            say(
                f"unchanged: {where} already holds {file} (ModifyIndex {entry.modify_index}, "
                f"digest {checked.digest[:12]}); nothing written"
            )
        return
    cas = entry.modify_index if entry is not None else 0
    try:
        written = consul.put(key, data, cas=cas)
    except ConsulError as exc:
        fail_line(f"{exc}; {where} may be unchanged, run `kv pull` to see")
    if not written:
        now = _current_index(consul, key)
        if entry is None:
            fail_line(
                f"conflict: {where} was created by someone else while pushing (ModifyIndex 0 -> {now}); "
                "nothing was overwritten: pull it, merge your changes and push again"
            )
        fail_line(
            f"conflict: {where} changed in Consul while pushing (ModifyIndex {cas} -> {now}); "
            "nothing was overwritten: pull it, merge your changes and push again"
        )
    after = _get(consul, key)
    new_index = after.modify_index if after is not None else None
    result = {
        "key": where,
        "result": "created" if entry is None else "updated",
        "previous_modify_index": cas if entry is not None else None,
        "modify_index": new_index,
        "digest": checked.digest,
    }
    if as_json:
        emit_json(result)
    elif entry is None:
        say(f"created: {where} (ModifyIndex {new_index}, digest {checked.digest[:12]}) from {file}")
    else:
        say(f"updated: {where} (ModifyIndex {cas} -> {new_index}, digest {checked.digest[:12]}) from {file}")


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
    from desired_state.load import digest_of

    address = _address(consul_url, ca, token_file)
    where = address.url()
    entry = _get(_connect(address), address.key)
    if entry is None:
        fail_line(f"{where}: no such key in Consul (create it with `kv push FILE`)")
    data = _value(entry)
    if output is not None:
        try:
            output.write_bytes(data)
        except OSError as exc:
            fail_line(f"-o {output}: cannot write: {exc.strerror or exc}")
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
            say(f"wrote {output}: {len(data)} bytes from {where} (ModifyIndex {entry.modify_index})")
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
                fail_line(f"${name} {value!r} cannot be split into a command: {exc}")
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
        fail_line(f"{where}: no such key in Consul (create it with `kv push FILE`)")
    original = _value(entry)
    read_index = entry.modify_index
    argv = _editor_command()

    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in key.rsplit("/", 1)[-1])[:40] or "topology"
    fd, name = tempfile.mkstemp(prefix=f"consul-reconciler-{stem}-", suffix=".yaml")
    path = Path(name)
    with os.fdopen(fd, "wb") as handle:
        handle.write(original)

    def kept(message: str) -> NoReturn:
        fail_line(f"{message}; your edit is kept in {path}; nothing was written")

    try:
        status = subprocess.run([*argv, str(path)], check=False).returncode
    except OSError as exc:
        path.unlink(missing_ok=True)
        fail_line(f"cannot run the editor {argv[0]!r}: {exc.strerror or exc}; nothing was written")
    try:
        edited = path.read_bytes()
    except OSError as exc:
        fail_line(f"cannot read the edited file {path}: {exc.strerror or exc}; nothing was written")
    if status != 0:
        if edited == original:
            path.unlink(missing_ok=True)
            fail_line(f"the editor {argv[0]!r} exited with status {status}; nothing was written to {where}")
        kept(f"the editor {argv[0]!r} exited with status {status}")
    if edited == original:
        path.unlink(missing_ok=True)
        say(f"no change: {where} left as it was (ModifyIndex {read_index})")
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
        fail_line(
            f"{where} changed in Consul since you opened it (ModifyIndex {read_index} -> "
            f"{_current_index(consul, key)}); your edit is kept in {path}; nothing was written"
        )
    path.unlink(missing_ok=True)
    after = _current_index(consul, key)
    say(f"updated: {where} (ModifyIndex {read_index} -> {after}, digest {checked.digest[:12]})")


kv_app.command()(history)
kv_app.command()(diff)
