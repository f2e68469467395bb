"""``kv history`` and ``kv diff``: the valid documents the controller applied, kept in the audit database."""

from __future__ import annotations

import difflib
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.cli.common import DbOpt, JsonOpt, emit_json, fail_line, open_log, row_json, say, time_text
from reconciler.consul_settings import FORMS, ConsulAddress, is_consul_url

if TYPE_CHECKING:
    from reconciler.store import DocumentRow


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
        fail_line("give --consul or --source, not both")
    wanted = consul_url if consul_url is not None else source
    if wanted is not None and is_consul_url(wanted):
        try:
            wanted = ConsulAddress.parse(wanted, token="").url()  # the form the controller records
        except ValueError as exc:
            fail_line(str(exc))
    elif consul_url is not None:
        fail_line(f"--consul {consul_url!r}: expected {FORMS}")
    from reconciler.formatting import text_table

    log = open_log(db, missing="fail")
    try:
        rows = log.state.documents(wanted, limit=limit)
        if not rows and wanted is not None and "://" not in wanted and not wanted.startswith("file:"):
            wanted = f"file:{wanted}"  # a bare path: file sources are recorded as file:PATH
            rows = log.state.documents(wanted, limit=limit)
    finally:
        log.close()
    if as_json:
        emit_json({"documents": [row_json(r) for r in rows]})
        return
    if not rows:
        say("no kept documents" + (f" for {wanted}" if wanted else ""))
        return
    say(
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


def diff(
    a: Annotated[str, typer.Argument(metavar="A", help="A kept document: its id or a digest prefix (4+).")],
    b: Annotated[str, typer.Argument(metavar="B", help="The other kept document: id or digest prefix.")],
    db: DbOpt = None,
) -> None:
    """Unified diff of two kept documents (from A to B); see `kv history` for ids and digests.

    Exit codes as diff(1) and `git diff --exit-code`: 0 when they are identical (says so), 1 when they
    differ (the diff is printed), 2 when A or B cannot be found or is ambiguous, or on another error.
    """
    log = open_log(db, missing="fail", code=2)
    try:
        docs: list[DocumentRow] = []
        for ref in (a, b):
            try:
                docs.append(log.state.find_document(ref.strip()))
            except KeyError as exc:
                fail_line(str(exc.args[0]) if exc.args else f"no kept document {ref!r}", 2)
    finally:
        log.close()
    first, second = docs
    if first.document == second.document:
        say(f"identical: {_label(first)} and {_label(second)}")
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
    raise typer.Exit(1)
