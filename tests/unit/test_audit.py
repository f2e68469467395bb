"""Audit log: migrations, runs/actions bookkeeping, queries, known hosts, --since parsing.

Every test uses a real SQLite file under tmp_path.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from reconciler.actual import Adoption
from reconciler.store import (
    DEFAULT_DB_ENV,
    MIGRATIONS_DIR,
    SCHEMA_REVISION,
    ActionFilter,
    ActionRecord,
    ActionRow,
    AuditLog,
    Base,
    ControllerState,
    HostState,
    RunRow,
    default_database_url,
    normalize_url,
    parse_since,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class StepClock:
    """Deterministic clock: every call returns the previous time plus ``step``."""

    def __init__(self, start: datetime = T0, step: timedelta = timedelta(minutes=1)) -> None:
        self.current = start - step
        self.step = step
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.current += self.step
            return self.current


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "audit.db"


@pytest.fixture
def log(db_path: Path) -> Iterator[AuditLog]:
    audit = AuditLog(str(db_path))
    yield audit
    audit.close()


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the file with the plain sqlite3 module, independently of the code under test."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# --------------------------------------------------------------------------- schema / migrations


def test_migrations_create_tables_columns_and_indexes(log: AuditLog, db_path: Path) -> None:
    assert db_path.is_file()  # parent directory "state/" was created
    insp = inspect(log.engine)
    assert set(insp.get_table_names()) == {
        "alembic_version",
        "runs",
        "actions",
        "known_hosts",
        "host_states",
        "desired_documents",
        "rollout_pauses",
        "adoptions",
        "snapshots",
        "controllers",
    }

    assert {c["name"] for c in insp.get_columns("runs")} == {
        "id", "cluster_id", "started_at", "finished_at", "status", "trigger", "source",
        "digest", "controller", "summary", "error", "lock_holder", "lock_index",
    }  # fmt: skip
    assert {c["name"] for c in insp.get_columns("actions")} == {
        "id", "run_id", "seq", "host", "node", "role", "container", "kind", "reason",
        "old_hash", "new_hash", "image", "container_id", "status", "error", "started_at",
        "finished_at", "duration_ms",
    }  # fmt: skip
    assert {c["name"] for c in insp.get_columns("known_hosts")} == {
        "cluster_id", "host", "endpoint", "first_seen", "last_seen",
    }  # fmt: skip

    nullable = {c["name"]: c["nullable"] for c in insp.get_columns("actions")}
    assert not nullable["run_id"] and not nullable["host"] and not nullable["started_at"]
    assert nullable["node"] and nullable["finished_at"] and nullable["duration_ms"]

    action_indexes = {ix["name"]: ix["column_names"] for ix in insp.get_indexes("actions")}
    assert action_indexes == {
        "ix_actions_run_id": ["run_id"],
        "ix_actions_host_started_at": ["host", "started_at"],
        "ix_actions_status_started_at": ["status", "started_at"],
        "ix_actions_started_at": ["started_at"],
        "ix_actions_host_status_started_at": ["host", "status", "started_at"],
        "ix_actions_node_started_at": ["node", "started_at"],
        "ix_actions_kind_started_at": ["kind", "started_at"],
    }
    assert {ix["name"] for ix in insp.get_indexes("runs")} == {"ix_runs_cluster_id_started_at"}

    (fk,) = insp.get_foreign_keys("actions")
    assert fk["referred_table"] == "runs"
    assert fk["constrained_columns"] == ["run_id"]
    assert fk["referred_columns"] == ["id"]
    assert insp.get_pk_constraint("known_hosts")["constrained_columns"] == ["cluster_id", "host"]


def test_alembic_head_is_the_version_stored_in_the_database(log: AuditLog, db_path: Path) -> None:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None
    assert sqlite_rows(db_path, "SELECT version_num FROM alembic_version") == [(head,)]
    # The first migration is the base of a single, linear history.
    assert [rev.revision for rev in script.walk_revisions()][-1] == "0001"
    assert head == HEAD_REVISION
    assert len(script.get_heads()) == 1


def test_models_match_the_migrated_schema(log: AuditLog) -> None:
    with log.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_second_open_is_a_noop_upgrade(db_path: Path) -> None:
    first = AuditLog(str(db_path))
    run_id = first.start_run(cluster_id="dc1", trigger="cli", source="a.yaml", digest="d1")
    first.close()
    before = sqlite_rows(db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")

    second = AuditLog(f"sqlite:///{db_path}")
    try:
        after = sqlite_rows(db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
        assert after == before
        assert sqlite_rows(db_path, "SELECT version_num FROM alembic_version") == [(HEAD_REVISION,)]
        run = second.get_run(run_id)
        assert run is not None and run.source == "a.yaml"
    finally:
        second.close()


def test_concurrent_first_opens_migrate_once(db_path: Path) -> None:
    errors: list[BaseException] = []
    logs: list[AuditLog] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def open_it() -> None:
        try:
            barrier.wait()
            audit = AuditLog(str(db_path))
            with lock:
                logs.append(audit)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for audit in logs:
        audit.close()
    assert errors == []
    assert sqlite_rows(db_path, "SELECT version_num FROM alembic_version") == [(HEAD_REVISION,)]


def test_concurrent_first_opens_from_several_processes(db_path: Path) -> None:
    """The controller and a CLI starting at once on a fresh file: one migration, no error."""
    repo_root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")])}
    script = (
        "import sys, time\n"
        "from reconciler.store import AuditLog\n"
        "while time.time() < float(sys.argv[2]): time.sleep(0.001)\n"
        "log = AuditLog(sys.argv[1])\n"
        "log.start_run(cluster_id='dc1', trigger='cli', source='x', digest=None)\n"
        "log.close()\n"
    )
    start_at = str(time.time() + 1.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(db_path), start_at],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        results.append((proc.returncode, err))
    assert [code for code, _ in results] == [0] * 4, [err for _, err in results]
    assert sqlite_rows(db_path, "SELECT version_num FROM alembic_version") == [(HEAD_REVISION,)]
    assert sqlite_rows(db_path, "SELECT count(*) FROM runs") == [(4,)]


def test_concurrent_opens_of_different_files(tmp_path: Path) -> None:
    """Alembic's context is process-global: upgrades in parallel threads must not mix."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def open_it(n: int) -> None:
        try:
            barrier.wait()
            with AuditLog(str(tmp_path / f"db{n}" / "audit.db")) as audit:
                audit.start_run(cluster_id=f"dc{n}", trigger="cli", source="x", digest=None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for n in range(6):
        path = tmp_path / f"db{n}" / "audit.db"
        assert sqlite_rows(path, "SELECT version_num FROM alembic_version") == [(HEAD_REVISION,)]
        assert sqlite_rows(path, "SELECT cluster_id FROM runs") == [(f"dc{n}",)]


def test_sqlite_uses_wal_and_busy_timeout(log: AuditLog, db_path: Path) -> None:
    with log.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 15_000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    # WAL is a property of the file: a plain sqlite3 connection sees it too.
    assert sqlite_rows(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_in_memory_database_works() -> None:
    audit = AuditLog("sqlite://")
    try:
        run_id = audit.start_run(cluster_id="dc1", trigger="cli", source="x", digest=None)
        audit.start_action(run_id, ActionRecord(seq=1, host="h1", kind="create"))
        assert len(audit.actions(ActionFilter())) == 1
    finally:
        audit.close()


# --------------------------------------------------------------------------- runs


def test_run_lifecycle_and_listing(db_path: Path) -> None:
    audit = AuditLog(str(db_path), clock=StepClock())
    try:
        r1 = audit.start_run(cluster_id="dc1", trigger="cli", source="a.yaml", digest="sha256:1")
        r2 = audit.start_run(
            cluster_id="dc2", trigger="interval", source="b.yaml", digest=None, controller="ctl:1"
        )
        r3 = audit.start_run(cluster_id="dc1", trigger="event", source="a.yaml", digest="sha256:2")

        run = audit.get_run(r1)
        assert run is not None
        assert run.status == "running" and run.finished_at is None and run.summary is None
        assert run.started_at == T0 and run.started_at.tzinfo is not None
        assert ":" in run.controller  # hostname:pid by default
        other = audit.get_run(r2)
        assert other is not None and other.controller == "ctl:1"

        summary = {"create": {"succeeded": 2}, "replace": {"failed": 1}}
        audit.finish_run(r1, status="failed", summary=summary, error="one replace failed")
        done = audit.get_run(r1)
        assert done is not None
        assert done.status == "failed"
        assert done.summary == summary
        assert done.error == "one replace failed"
        assert done.finished_at is not None and done.finished_at > done.started_at

        assert [r.id for r in audit.runs()] == [r3, r2, r1]
        assert [r.id for r in audit.runs(limit=2)] == [r3, r2]
        assert [r.id for r in audit.runs(cluster_id="dc1")] == [r3, r1]
        assert audit.runs(cluster_id="nope") == []
        assert audit.get_run(9999) is None

        as_dict = done.to_dict()
        assert as_dict["started_at"] == T0.isoformat()
        assert as_dict["summary"] == summary
        assert json.loads(json.dumps(as_dict)) == as_dict
        assert isinstance(done, RunRow)
    finally:
        audit.close()


def test_finish_run_validates(log: AuditLog) -> None:
    run_id = log.start_run(cluster_id="dc1", trigger="cli", source="x", digest=None)
    with pytest.raises(ValueError, match="status"):
        log.finish_run(run_id, status="running")
    with pytest.raises(ValueError, match="status"):
        log.finish_run(run_id, status="done")
    with pytest.raises(KeyError):
        log.finish_run(424242, status="succeeded")


# --------------------------------------------------------------------------- actions


def test_start_action_is_committed_before_it_returns(db_path: Path) -> None:
    writer = AuditLog(str(db_path))
    reader = AuditLog(str(db_path))
    try:
        run_id = writer.start_run(cluster_id="dc1", trigger="cli", source="x", digest=None)
        action_id = writer.start_action(
            run_id,
            ActionRecord(
                seq=1,
                host="docker-a",
                node="consul-1",
                role="server",
                container="consul-server-1",
                kind="replace",
                reason=[{"field": "image", "old": "consul:1.17", "new": "consul:1.18"}],
                old_hash="h-old",
                new_hash="h-new",
                image="consul:1.18",
                container_id="abc123",
            ),
        )
        # Seen by another engine (as the CLI in another process would) before finish_action.
        (row,) = reader.actions(ActionFilter(run_id=run_id))
        assert row.id == action_id
        assert row.status == "started"
        assert row.finished_at is None and row.duration_ms is None
        assert row.reason == [{"field": "image", "old": "consul:1.17", "new": "consul:1.18"}]
        assert (row.host, row.node, row.role, row.container) == (
            "docker-a", "consul-1", "server", "consul-server-1",
        )  # fmt: skip
        assert (row.old_hash, row.new_hash, row.image, row.container_id) == (
            "h-old", "h-new", "consul:1.18", "abc123",
        )  # fmt: skip
        # And by a plain sqlite3 connection.
        assert sqlite_rows(db_path, f"SELECT status FROM actions WHERE id = {action_id}") == [("started",)]
    finally:
        writer.close()
        reader.close()


def test_finish_action_sets_duration_and_fields(db_path: Path) -> None:
    clock = StepClock(step=timedelta(milliseconds=1500))
    audit = AuditLog(str(db_path), clock=clock)
    try:
        run_id = audit.start_run(cluster_id="dc1", trigger="cli", source="x", digest=None)
        a1 = audit.start_action(run_id, ActionRecord(seq=1, host="h", kind="create", container_id="old-id"))
        audit.finish_action(a1, status="succeeded", container_id="new-id")
        a2 = audit.start_action(run_id, ActionRecord(seq=2, host="h", kind="start", container_id="keep-me"))
        audit.finish_action(a2, status="failed", error="boom")

        rows = {r.id: r for r in audit.actions(ActionFilter(run_id=run_id))}
        first, second = rows[a1], rows[a2]
        assert first.status == "succeeded"
        assert first.container_id == "new-id"
        assert first.finished_at is not None
        assert first.finished_at - first.started_at == timedelta(milliseconds=1500)
        assert first.duration_ms == pytest.approx(1500.0)
        assert first.error is None
        assert second.status == "failed" and second.error == "boom"
        assert second.container_id == "keep-me"  # not overwritten when not given
        assert second.duration_ms == pytest.approx(1500.0)

        with pytest.raises(ValueError, match="status"):
            audit.finish_action(a1, status="started")
        with pytest.raises(KeyError):
            audit.finish_action(987654, status="succeeded")
    finally:
        audit.close()


def test_real_clock_duration_is_non_negative(log: AuditLog) -> None:
    run_id = log.start_run(cluster_id="dc1", trigger="cli", source="x", digest=None)
    action_id = log.start_action(run_id, ActionRecord(seq=1, host="h", kind="remove"))
    log.finish_action(action_id, status="succeeded")
    (row,) = log.actions(ActionFilter(run_id=run_id))
    assert row.duration_ms is not None and row.duration_ms >= 0.0
    assert row.finished_at is not None and row.finished_at >= row.started_at
    assert row.started_at.tzinfo is not None and row.started_at.utcoffset() == timedelta(0)


def test_record_action_is_already_finished(log: AuditLog) -> None:
    run_id = log.start_run(cluster_id="dc1", trigger="cli", source="x", digest=None)
    blocked = log.record_action(
        run_id,
        ActionRecord(
            seq=1,
            host="h",
            kind="blocked",
            node="consul-1",
            reason=[{"message": "would remove the last server"}],
        ),
    )
    failed = log.record_action(
        run_id, ActionRecord(seq=2, host="h2", kind="observe"), status="failed", error="connection refused"
    )
    rows = {r.id: r for r in log.actions(ActionFilter(run_id=run_id))}
    assert rows[blocked].status == "skipped"
    assert rows[blocked].reason == [{"message": "would remove the last server"}]
    assert rows[blocked].finished_at == rows[blocked].started_at
    assert rows[blocked].duration_ms == 0.0
    assert rows[failed].status == "failed" and rows[failed].error == "connection refused"
    with pytest.raises(ValueError, match="status"):
        log.record_action(run_id, ActionRecord(seq=3, host="h", kind="create"), status="started")
    with pytest.raises(ValueError, match="status"):
        log.start_action(run_id, ActionRecord(seq=3, host="h", kind="create"), status="bogus")


def test_reason_values_that_are_not_json_are_stored_as_text(log: AuditLog) -> None:
    run_id = log.start_run(cluster_id="dc1", trigger="cli", source="x", digest=None)
    log.start_action(
        run_id,
        ActionRecord(
            seq=1,
            host="h",
            kind="replace",
            reason=[
                {"field": "env", "old": {"A": "1"}, "new": None},
                {"field": "when", "old": datetime(2026, 1, 2, tzinfo=UTC), "new": {"x", "y"}},
            ],
        ),
    )
    (row,) = log.actions(ActionFilter(run_id=run_id))
    assert row.reason == [
        {"field": "env", "old": {"A": "1"}, "new": None},
        {"field": "when", "old": "2026-01-02T00:00:00+00:00", "new": ["x", "y"]},
    ]
    assert json.loads(json.dumps(row.to_dict()))["reason"] == row.reason


@pytest.fixture
def populated(db_path: Path) -> Iterator[tuple[AuditLog, dict[str, int]]]:
    """Two runs, seven actions, one minute apart starting at T0 (+ one minute per run)."""
    audit = AuditLog(str(db_path), clock=StepClock())
    ids: dict[str, int] = {}
    r1 = audit.start_run(cluster_id="dc1", trigger="cli", source="x", digest=None)  # T0
    ids["run1"] = r1
    # start_action uses one tick, finish_action another.
    ids["a"] = audit.start_action(r1, ActionRecord(seq=1, host="h1", node="n1", kind="create"))  # T0+1
    audit.finish_action(ids["a"], status="succeeded")  # T0+2
    ids["b"] = audit.start_action(r1, ActionRecord(seq=2, host="h1", node="n2", kind="replace"))  # T0+3
    audit.finish_action(ids["b"], status="failed", error="x")  # T0+4
    ids["c"] = audit.start_action(r1, ActionRecord(seq=3, host="h2", node="n3", kind="create"))  # T0+5
    audit.finish_action(ids["c"], status="succeeded")  # T0+6
    ids["d"] = audit.record_action(r1, ActionRecord(seq=4, host="h2", node=None, kind="blocked"))  # T0+7
    r2 = audit.start_run(cluster_id="dc1", trigger="interval", source="x", digest=None)  # T0+8
    ids["run2"] = r2
    ids["e"] = audit.start_action(r2, ActionRecord(seq=1, host="h1", node="n1", kind="start"))  # T0+9
    audit.finish_action(ids["e"], status="succeeded")  # T0+10
    ids["f"] = audit.start_action(r2, ActionRecord(seq=2, host="h3", node="n4", kind="remove"))  # T0+11
    ids["g"] = audit.start_action(
        r2, ActionRecord(seq=3, host="h1", node="n2", kind="replace")
    )  # T0+12, unfinished
    audit.finish_run(r1, status="failed", summary={"create": {"succeeded": 2}})  # T0+13
    yield audit, ids
    audit.close()


def _ids(rows: list[ActionRow]) -> list[int]:
    return [r.id for r in rows]


def test_action_filters_return_exactly_the_expected_rows(
    populated: tuple[AuditLog, dict[str, int]],
) -> None:
    audit, i = populated

    def q(**kwargs: Any) -> list[int]:
        return _ids(audit.actions(ActionFilter(**kwargs)))

    # Newest first.
    assert q() == [i["g"], i["f"], i["e"], i["d"], i["c"], i["b"], i["a"]]
    assert q(host="h1") == [i["g"], i["e"], i["b"], i["a"]]
    assert q(host="h2") == [i["d"], i["c"]]
    assert q(node="n2") == [i["g"], i["b"]]
    assert q(kind="create") == [i["c"], i["a"]]
    assert q(kind="blocked") == [i["d"]]
    assert q(status="succeeded") == [i["e"], i["c"], i["a"]]
    assert q(status="started") == [i["g"], i["f"]]
    assert q(status="failed") == [i["b"]]
    assert q(status="skipped") == [i["d"]]
    assert q(run_id=i["run1"]) == [i["d"], i["c"], i["b"], i["a"]]
    assert q(run_id=i["run2"]) == [i["g"], i["f"], i["e"]]
    # since is inclusive; naive datetimes are UTC; aware ones in other zones are converted.
    assert q(since=T0 + timedelta(minutes=9)) == [i["g"], i["f"], i["e"]]
    assert q(since=(T0 + timedelta(minutes=9, seconds=1)).replace(tzinfo=None)) == [i["g"], i["f"]]
    plus2 = timezone(timedelta(hours=2))
    assert q(since=(T0 + timedelta(minutes=11)).astimezone(plus2)) == [i["g"], i["f"]]
    assert q(since=T0 + timedelta(days=1)) == []
    assert q(limit=2) == [i["g"], i["f"]]
    assert q(limit=None) == q(limit=1000)
    # Combined.
    assert q(host="h1", status="succeeded") == [i["e"], i["a"]]
    assert q(host="h1", kind="replace", run_id=i["run1"]) == [i["b"]]
    assert q(host="h1", since=T0 + timedelta(minutes=2), limit=2) == [i["g"], i["e"]]
    assert q(host="nope") == []
    # Default filter object.
    assert _ids(audit.actions(ActionFilter())) == q()


def test_action_row_to_dict_is_json_ready(populated: tuple[AuditLog, dict[str, int]]) -> None:
    audit, i = populated
    (row,) = audit.actions(ActionFilter(kind="remove"))
    d = row.to_dict()
    assert d["id"] == i["f"]
    assert d["started_at"] == (T0 + timedelta(minutes=11)).isoformat()
    assert d["finished_at"] is None
    assert d["reason"] == []
    assert set(d) == {
        "id", "run_id", "seq", "host", "node", "role", "container", "kind", "reason", "old_hash",
        "new_hash", "image", "container_id", "status", "error", "started_at", "finished_at",
        "duration_ms",
    }  # fmt: skip
    assert json.loads(json.dumps(d)) == d


def test_mark_interrupted(populated: tuple[AuditLog, dict[str, int]]) -> None:
    audit, i = populated
    # Another cluster's run, with its own unfinished action.
    other_run = audit.start_run(cluster_id="dc9", trigger="cli", source="y", digest=None)
    other_action = audit.start_action(other_run, ActionRecord(seq=1, host="h9", kind="create"))

    assert audit.mark_interrupted(cluster_id="dc1") == 2
    assert audit.actions(ActionFilter(status="started")) == [
        r for r in audit.actions(ActionFilter()) if r.id == other_action
    ]
    run2 = audit.get_run(i["run2"])
    assert run2 is not None and run2.status == "interrupted"
    assert run2.error is not None and run2.error.startswith("found unfinished at ")
    other = audit.get_run(other_run)
    assert other is not None and other.status == "running"

    interrupted = audit.actions(ActionFilter(status="interrupted"))
    assert _ids(interrupted) == [i["g"], i["f"]]
    for row in interrupted:
        assert row.error is not None and row.error.startswith("found unfinished at 2026-")
        assert row.finished_at is None
    # Finished actions are untouched.
    (done,) = audit.actions(ActionFilter(kind="create", status="succeeded", host="h2"))
    assert done.error is None

    # Without arguments: everything left open, anywhere.
    assert audit.mark_interrupted() == 1
    assert audit.actions(ActionFilter(status="started")) == []
    other = audit.get_run(other_run)
    assert other is not None and other.status == "interrupted"
    # Idempotent.
    assert audit.mark_interrupted() == 0
    # A run that had finished keeps its status and error.
    run1 = audit.get_run(i["run1"])
    assert run1 is not None and run1.status == "failed" and run1.error is None


# --------------------------------------------------------------------------- known hosts


def test_known_hosts_upsert_and_forget(db_path: Path) -> None:
    audit = AuditLog(str(db_path), clock=StepClock())
    try:
        assert audit.state.known_hosts("dc1") == {}
        ep1 = {"url": "tcp://10.0.0.1:2376", "tls": {"verify": True, "ca": "/etc/ca.pem"}, "timeout": 10}
        audit.state.remember_host("dc1", "docker-a", ep1)  # T0
        audit.state.remember_host("dc1", "docker-b", {"url": "ssh://ops@10.0.0.2"})  # T0+1
        audit.state.remember_host("dc2", "docker-a", {"url": "unix:///var/run/docker.sock"})  # T0+2
        assert audit.state.known_hosts("dc1") == {"docker-a": ep1, "docker-b": {"url": "ssh://ops@10.0.0.2"}}

        ep1b = {**ep1, "timeout": 30}
        audit.state.remember_host("dc1", "docker-a", ep1b)  # T0+3: update, not a second row
        assert audit.state.known_hosts("dc1")["docker-a"] == ep1b
        rows = sqlite_rows(
            db_path,
            "SELECT first_seen, last_seen FROM known_hosts WHERE cluster_id='dc1' AND host='docker-a'",
        )
        assert len(rows) == 1
        first_seen, last_seen = rows[0]
        assert str(first_seen).startswith("2026-03-01 12:00:00")
        assert str(last_seen).startswith("2026-03-01 12:03:00")

        audit.state.forget_host("dc1", "docker-a")
        audit.state.forget_host("dc1", "never-seen")  # no error
        assert audit.state.known_hosts("dc1") == {"docker-b": {"url": "ssh://ops@10.0.0.2"}}
        assert audit.state.known_hosts("dc2") == {"docker-a": {"url": "unix:///var/run/docker.sock"}}
    finally:
        audit.close()


def test_remember_hosts_writes_many_in_one_transaction(db_path: Path) -> None:
    """A pass that acts on many hosts records their endpoints in one commit: new ones inserted, known
    ones updated, all with the same time (one transaction), nothing for an empty batch."""
    audit = AuditLog(str(db_path), clock=StepClock())
    try:
        audit.state.remember_host("dc1", "h0", {"url": "unix:///old.sock"})  # T0
        audit.state.remember_hosts("dc1", {})  # nothing: no transaction, no clock step
        batch = {f"h{n}": {"url": f"unix:///h{n}.sock"} for n in range(50)}
        audit.state.remember_hosts("dc1", batch)  # T0+1, one transaction
        assert audit.state.known_hosts("dc1") == batch
        rows = sqlite_rows(
            db_path, "SELECT host, first_seen, last_seen FROM known_hosts WHERE cluster_id='dc1'"
        )
        assert len(rows) == 50
        assert {str(last)[:19] for _host, _first, last in rows} == {"2026-03-01 12:01:00"}
        first = {host: str(first)[:19] for host, first, _last in rows}
        assert first["h0"] == "2026-03-01 12:00:00" and first["h1"] == "2026-03-01 12:01:00"
    finally:
        audit.close()


def test_known_hosts_survive_reopen(db_path: Path) -> None:
    with AuditLog(str(db_path)) as audit:
        audit.state.remember_host("dc1", "docker-a", {"url": "tcp://a:2375"})
    with AuditLog(str(db_path)) as audit:
        assert audit.state.known_hosts("dc1") == {"docker-a": {"url": "tcp://a:2375"}}


def test_the_state_store_shares_the_audit_logs_database(db_path: Path) -> None:
    """AuditLog(url).state is the controller's state on the same open database: same engine (an
    in-memory database has no tables but on the engine that migrated it), same clock, and what it
    writes is read back through the state of another AuditLog on the same file."""
    with AuditLog("sqlite://") as memory:
        assert isinstance(memory.state, ControllerState)
        memory.state.remember_host("dc1", "docker-a", {"url": "tcp://a:2375"})
        assert memory.state.known_hosts("dc1") == {"docker-a": {"url": "tcp://a:2375"}}
    with AuditLog(str(db_path), clock=StepClock()) as writer, AuditLog(str(db_path)) as reader:
        writer.state.pause_rollout("dc1", "gate failed", "d" * 64)  # T0: the writer's clock
        writer.state.set_host_states("dc1", [HostState("h1", "backoff", 2, None, 1, "down")])
        assert reader.state.rollout_pause("dc1") == ("gate failed", "d" * 64, T0)
        assert reader.state.host_states("dc1")["h1"].failures == 2
        assert reader.state.resume_rollout("dc1") and writer.state.rollout_pause("dc1") is None


# --------------------------------------------------------------------------- threads


def test_parallel_writers_and_a_reader(db_path: Path) -> None:
    """The executor's threads share one AuditLog while another one (the CLI) reads."""
    writer = AuditLog(str(db_path))
    other_writer = AuditLog(str(db_path))
    reader = AuditLog(str(db_path))
    run_id = writer.start_run(cluster_id="dc1", trigger="cli", source="x", digest=None)
    errors: list[BaseException] = []
    stop = threading.Event()
    per_thread = 20

    def write(audit: AuditLog, host: str) -> None:
        try:
            for n in range(per_thread):
                action_id = audit.start_action(run_id, ActionRecord(seq=n, host=host, kind="create"))
                audit.finish_action(action_id, status="succeeded")
                audit.state.remember_host("dc1", host, {"n": n})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read() -> None:
        try:
            while not stop.is_set():
                reader.actions(ActionFilter(run_id=run_id, limit=50))
                reader.state.known_hosts("dc1")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writers = [
        threading.Thread(target=write, args=(writer if n % 2 else other_writer, f"h{n}")) for n in range(6)
    ]
    reading = threading.Thread(target=read)
    reading.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reading.join()
    try:
        assert errors == []
        rows = reader.actions(ActionFilter(run_id=run_id, limit=None))
        assert len(rows) == 6 * per_thread
        assert {r.status for r in rows} == {"succeeded"}
        assert reader.state.known_hosts("dc1") == {f"h{n}": {"n": per_thread - 1} for n in range(6)}
    finally:
        writer.close()
        other_writer.close()
        reader.close()


# --------------------------------------------------------------------------- URLs


def test_normalize_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize_url("sub/x.db") == f"sqlite:///{tmp_path.resolve()}/sub/x.db"
    assert normalize_url("/abs/x.db") == "sqlite:////abs/x.db"
    assert normalize_url("  /abs/x.db  ") == "sqlite:////abs/x.db"
    assert normalize_url("postgresql+psycopg://u:p@db/audit") == "postgresql+psycopg://u:p@db/audit"
    assert normalize_url("sqlite:///rel.db") == "sqlite:///rel.db"
    assert normalize_url("sqlite://") == "sqlite://"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert normalize_url("~/a.db") == f"sqlite:///{tmp_path.resolve()}/home/a.db"
    with pytest.raises(ValueError):
        normalize_url("   ")


def test_default_database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(DEFAULT_DB_ENV, raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert default_database_url() == (
        f"sqlite:///{tmp_path.resolve()}/home/.local/state/consul-reconciler/audit.db"
    )
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_database_url() == f"sqlite:///{tmp_path.resolve()}/xdg/consul-reconciler/audit.db"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert default_database_url().endswith("/home/.local/state/consul-reconciler/audit.db")
    monkeypatch.setenv(DEFAULT_DB_ENV, str(tmp_path / "env.db"))
    assert default_database_url() == f"sqlite:///{tmp_path.resolve()}/env.db"
    monkeypatch.setenv(DEFAULT_DB_ENV, "postgresql://audit@db/audit")
    assert default_database_url() == "postgresql://audit@db/audit"
    monkeypatch.setenv(DEFAULT_DB_ENV, "")
    assert default_database_url().endswith("/home/.local/state/consul-reconciler/audit.db")


def test_open_creates_missing_parent_directories(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c" / "audit.db"
    url = f"sqlite:///{target}"
    with AuditLog(url) as audit:
        audit.start_run(cluster_id="dc1", trigger="cli", source="x", digest=None)
    assert target.is_file()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 1
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- parse_since

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
HEAD_REVISION = SCHEMA_REVISION


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("2h", NOW - timedelta(hours=2)),
        ("3d", NOW - timedelta(days=3)),
        ("1w", NOW - timedelta(weeks=1)),
        ("0s", NOW),
        (" 2H ", NOW - timedelta(hours=2)),
        ("2026-02-27", datetime(2026, 2, 27, tzinfo=UTC)),
        ("2026-02-27T10:30:00", datetime(2026, 2, 27, 10, 30, tzinfo=UTC)),
        ("2026-02-27 10:30", datetime(2026, 2, 27, 10, 30, tzinfo=UTC)),
        ("2026-02-27T10:30:00Z", datetime(2026, 2, 27, 10, 30, tzinfo=UTC)),
        ("2026-02-27T10:30:00+02:00", datetime(2026, 2, 27, 8, 30, tzinfo=UTC)),
        ("2026-02-27T10:30:00.250-05:00", datetime(2026, 2, 27, 15, 30, 0, 250000, tzinfo=UTC)),
    ],
)
def test_parse_since_forms(value: str, expected: datetime) -> None:
    result = parse_since(value, now=NOW)
    assert result == expected
    assert result.tzinfo is not None and result.utcoffset() == timedelta(0)


def test_parse_since_relative_to_the_current_time() -> None:
    before = datetime.now(UTC)
    result = parse_since("1h")
    after = datetime.now(UTC)
    assert before - timedelta(hours=1) <= result <= after - timedelta(hours=1)


def test_parse_since_naive_now_is_utc() -> None:
    assert parse_since("1m", now=NOW.replace(tzinfo=None)) == NOW - timedelta(minutes=1)


@pytest.mark.parametrize(
    "value", ["", "   ", "yesterday", "5y", "-5m", "1.5", "15 minutes", "m15", "2026-13-01", "12:00"]
)
def test_parse_since_errors_name_the_accepted_forms(value: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_since(value, now=NOW)
    message = str(info.value)
    assert "90s" in message and "1w" in message and "ISO 8601" in message


def test_parse_since_overflow_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="too far"):
        parse_since("999999999w", now=NOW)


def test_host_states_replace_per_host_and_read_back(log: AuditLog) -> None:
    from reconciler.store import HostState

    retry = datetime(2026, 3, 1, 12, 5, tzinfo=UTC)
    log.state.set_host_states(
        "c1", [HostState("h1", "ok", 0, None, 0, None), HostState("h2", "backoff", 2, retry, 3, "x")]
    )
    log.state.set_host_states("c1", [HostState("h1", "degraded", 4, retry, 1, "crash loop")])
    log.state.set_host_states("c2", [HostState("h1", "ok", 0, None, 0, None)])
    states = log.state.host_states("c1")
    assert sorted(states) == ["h1", "h2"]
    assert (states["h1"].state, states["h1"].failures, states["h1"].detail) == ("degraded", 4, "crash loop")
    assert states["h2"].retry_at == retry and states["h2"].drift == 3
    assert log.state.host_states("c2")["h1"].state == "ok"


def test_prune_deletes_old_finished_runs_and_their_actions_only(db_path: Path) -> None:
    clock = {"now": NOW - timedelta(days=10)}
    log = AuditLog(str(db_path), clock=lambda: clock["now"])
    try:
        old = log.start_run(cluster_id="c", trigger="t", source="s", digest=None)
        log.start_action(old, ActionRecord(seq=1, host="h", kind="create"))
        log.finish_run(old, status="succeeded")
        still_running = log.start_run(cluster_id="c", trigger="t", source="s", digest=None)
        clock["now"] = NOW
        new = log.start_run(cluster_id="c", trigger="t", source="s", digest=None)
        log.start_action(new, ActionRecord(seq=1, host="h", kind="create"))
        assert log.prune(NOW - timedelta(days=7)) == 1
        assert log.get_run(old) is None
        assert log.get_run(still_running) is not None
        assert [a.run_id for a in log.actions()] == [new]
    finally:
        log.close()


def test_kept_documents_last_known_good_history_and_lookup(db_path: Path) -> None:
    clock = {"now": NOW}
    log = AuditLog(str(db_path), clock=lambda: clock["now"])
    try:
        log.state.keep_document(source="consul://a/k", digest="aaaa1111", cluster_id="c", document="v1")
        clock["now"] = NOW + timedelta(minutes=1)
        log.state.keep_document(source="consul://a/k", digest="bbbb2222", cluster_id="c", document="v2")
        log.state.keep_document(source="file:/x", digest="cccc3333", cluster_id="c", document="other source")
        clock["now"] = NOW + timedelta(minutes=2)
        log.state.keep_document(
            source="consul://a/k", digest="aaaa1111", cluster_id="c", document="v1"
        )  # re-applied
        last = log.state.last_document("consul://a/k")
        assert last is not None and (last.digest, last.document) == ("aaaa1111", "v1")
        assert last.first_seen == NOW and last.last_applied == NOW + timedelta(minutes=2)
        assert [d.digest for d in log.state.documents("consul://a/k")] == ["bbbb2222", "aaaa1111"]
        assert log.state.find_document("bbbb").document == "v2"
        assert log.state.find_document(str(last.id)).digest == "aaaa1111"
        with pytest.raises(KeyError, match="no kept document"):
            log.state.find_document("ffff")
        assert log.state.last_document("consul://other/k") is None
        run = log.start_run(
            cluster_id="c", trigger="t", source="s", digest=None, lock_holder="sess-1", lock_index=7
        )
        row = log.get_run(run)
        assert row is not None and (row.lock_holder, row.lock_index) == ("sess-1", 7)
    finally:
        log.close()


OPEN_WITHOUT_ALEMBIC = """
import sys
from reconciler.store import AuditLog
AuditLog(sys.argv[1]).close()
print("alembic" in sys.modules)
"""


def test_an_up_to_date_database_opens_without_alembic(db_path: Path) -> None:
    def opens_with_alembic() -> bool:
        done = subprocess.run(
            [sys.executable, "-c", OPEN_WITHOUT_ALEMBIC, str(db_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip() == "True"

    assert opens_with_alembic()  # a new database: the migrations run
    assert sqlite_rows(db_path, "SELECT version_num FROM alembic_version") == [(SCHEMA_REVISION,)]
    assert not opens_with_alembic()  # at head: no Alembic
    with sqlite3.connect(db_path) as db:  # an older revision: upgraded again
        db.execute("UPDATE alembic_version SET version_num = '0004'")
        for index in ("host_status_started_at", "node_started_at", "kind_started_at"):  # what 0005 added
            db.execute(f"DROP INDEX ix_actions_{index}")
        db.execute("DROP TABLE adoptions")  # what 0006 added
        db.execute("DROP TABLE snapshots")  # what 0007 added
        db.execute("DROP TABLE controllers")  # what 0008 added
    assert opens_with_alembic()
    assert sqlite_rows(db_path, "SELECT version_num FROM alembic_version") == [(SCHEMA_REVISION,)]


def test_a_new_database_and_its_folder_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "consul-reconciler" / "audit.db"
    with AuditLog(str(path)) as audit:
        run = audit.start_run(cluster_id="c", trigger="t", source="s", digest=None)
        audit.finish_run(run, status="succeeded")
        wal = path.with_name("audit.db-wal")
        modes = {p.name: p.stat().st_mode & 0o777 for p in (path, wal) if p.exists()}
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert modes and set(modes.values()) == {0o600}, modes


def test_an_adoption_in_place_is_kept_by_host_and_name_and_replaced_by_the_next(log: AuditLog) -> None:
    first = Adoption("a" * 64, "hash-1", {"image": "consul:1.14.11"})
    log.state.adopt("blog", "node1", "consul", first)
    log.state.adopt("blog", "node1", "registrator", Adoption("b" * 64, "hash-2", {}))
    log.state.adopt("other", "node1", "consul", Adoption("c" * 64, "hash-3", {}))
    assert log.state.adoptions("blog") == {
        ("node1", "consul"): first,
        ("node1", "registrator"): Adoption("b" * 64, "hash-2", {}),
    }
    again = Adoption("d" * 64, "hash-4", {"image": "consul:1.15"})
    log.state.adopt("blog", "node1", "consul", again)
    assert log.state.adoptions("blog")[("node1", "consul")] == again
    assert set(log.state.adoptions("other")) == {("node1", "consul")}
