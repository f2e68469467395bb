"""`snapshots`: the raft snapshots the controller took before server changes, as the audit database
records them, newest first."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.cli.common import DbOpt, JsonOpt, emit_json, open_log, out, row_json, time_text

if TYPE_CHECKING:
    from reconciler.store import SnapshotRow


def snapshots_cmd(
    cluster: Annotated[str | None, typer.Option(help="Only this cluster's snapshots.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (newest first).")] = 20,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Read every kept file again and check it as Consul does before a restore "
            "(gzip, tar, meta.json, state.bin, SHA256SUMS).",
        ),
    ] = False,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List the raft snapshots taken before server changes, newest first.

    Before the first replace or remove of a Consul server in a pass, the controller saves a snapshot
    (GET /v1/snapshot through the leader, with the ACL token) to the snapshot folder (`snapshots.dir`
    in the topology; by default `snapshots` beside the audit database), checks that it is a whole,
    readable archive, and records its path, size, raft index and SHA-256 here; only the newest
    `snapshots.keep` (10) files per cluster are kept. While no snapshot can be taken, server changes
    wait (the reason is in `audit --kind snapshot`). FILE is `kept`, `pruned` (deleted to keep the
    newest) or `missing` (deleted by someone else).

    To restore one into a fresh cluster: `consul snapshot restore FILE`, or PUT the file to
    /v1/snapshot with a management token."""
    from reconciler.formatting import text_table

    log_db = open_log(db, missing="fail")
    try:
        rows = log_db.snapshots.newest(cluster_id=cluster, limit=limit)
    finally:
        log_db.close()
    listed = [(row, _file_state(row)) for row in rows]
    checks = [_check(row) if verify and state == "kept" else None for row, state in listed]
    if as_json:
        emit_json(
            {
                "snapshots": [
                    row_json(row) | {"file": state} | ({"check": check} if verify else {})
                    for (row, state), check in zip(listed, checks, strict=True)
                ]
            }
        )
        return
    if not listed:
        out.print("no snapshots recorded", markup=False)
        return
    headers = ["id", "run", "taken", "cluster", "raft index", "bytes", "file", "sha256", "path"]
    table = [
        [
            str(row.id),
            str(row.run_id or ""),
            time_text(row.taken_at),
            row.cluster_id,
            str(row.raft_index),
            str(row.size),
            state,
            row.sha256[:12],
            row.path,
        ]
        + ([check or ""] if verify else [])
        for (row, state), check in zip(listed, checks, strict=True)
    ]
    out.print(text_table(headers + (["check"] if verify else []), table), markup=False)


def _file_state(row: SnapshotRow) -> str:
    if row.pruned_at is not None:
        return "pruned"
    return "kept" if Path(row.path).is_file() else "missing"


def _check(row: SnapshotRow) -> str:
    """``ok``, or what is wrong with the kept file: unreadable, or not the file that was recorded."""
    from reconciler.snapshots import SnapshotError, verify_file

    path = Path(row.path)
    try:
        info = verify_file(path)
        digest = _sha256(path)
    except SnapshotError as exc:
        return f"UNREADABLE: {exc}"
    except OSError as exc:
        return f"UNREADABLE: {exc.strerror or exc}"
    if digest != row.sha256 or info.index != row.raft_index:
        return "CHANGED: its SHA-256 or raft index is not what was recorded"
    return "ok"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 16):
            digest.update(chunk)
    return digest.hexdigest()
