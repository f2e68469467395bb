"""The audit log on both backends it supports: SQLite (the default) and a real PostgreSQL server
(Debian's postgresql, started by testbed/pgserver.py), migrations included."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from reconciler.store import MIGRATIONS_DIR, ActionFilter, ActionRecord, AuditLog, Base, HostState
from testbed.controller_harness import ControllerProcess
from testbed.fleet import AGENT_IMAGE_2, Engine
from testbed.pgserver import PostgresError, fresh_database
from tests.integration.harness import Fleet


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    try:
        yield fresh_database(f"audit_{uuid.uuid4().hex[:10]}")
    except PostgresError as exc:
        pytest.fail(f"PostgreSQL could not be started: {exc}", pytrace=False)


def test_migrations_reach_head_and_match_the_models(db_url: str) -> None:
    log = AuditLog(db_url)
    try:
        tables = set(inspect(log.engine).get_table_names())
        assert {
            "runs",
            "actions",
            "known_hosts",
            "host_states",
            "desired_documents",
            "rollout_pauses",
            "alembic_version",
        } <= tables
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        head = ScriptDirectory.from_config(config).get_current_head()
        with log.engine.connect() as conn:
            context = MigrationContext.configure(conn)
            assert context.get_current_revision() == head
            assert compare_metadata(context, Base.metadata) == []
    finally:
        log.close()
    AuditLog(db_url).close()  # a second open is a no-op upgrade


def test_rows_filters_and_state_round_trip(db_url: str) -> None:
    log = AuditLog(db_url)
    try:
        run = log.start_run(
            cluster_id="c", trigger="cli", source="file:x", digest="d" * 64, lock_holder="s-1", lock_index=3
        )
        a1 = log.start_action(
            run,
            ActionRecord(
                seq=1,
                host="h1",
                kind="create",
                node="n1",
                role="server",
                container="consul",
                reason=[{"field": "image", "old": "a", "new": "b"}],
            ),
        )
        log.finish_action(a1, status="succeeded", container_id="abc")
        log.record_action(
            run, ActionRecord(seq=2, host="h2", kind="observe"), status="failed", error="unreachable"
        )
        log.finish_run(run, status="failed", summary={"failed": 1})
        assert [a.host for a in log.actions(ActionFilter(status="failed"))] == ["h2"]
        assert [a.kind for a in log.actions(ActionFilter(host="h1"))] == ["create"]
        since = datetime.now(UTC) - timedelta(minutes=5)
        assert len(log.actions(ActionFilter(since=since, run_id=run))) == 2
        row = log.get_run(run)
        assert row is not None and (row.status, row.lock_index, row.summary) == ("failed", 3, {"failed": 1})
        log.state.remember_host("c", "h1", {"url": "unix:///x"})
        log.state.remember_host("c", "h1", {"url": "unix:///y"})
        assert log.state.known_hosts("c") == {"h1": {"url": "unix:///y"}}
        log.state.set_host_states("c", [HostState("h1", "backoff", 2, None, 1, "down")])
        assert log.state.host_states("c")["h1"].failures == 2
        log.state.keep_document(source="consul://k", digest="e" * 64, cluster_id="c", document="cluster: c\n")
        assert log.state.last_document("consul://k") is not None
        log.state.pause_rollout("c", "gate failed", "e" * 64)
        assert log.state.rollout_pause("c") is not None and log.state.resume_rollout("c")
        killed = log.start_run(cluster_id="c", trigger="t", source="s", digest=None)  # a killed controller's
        log.start_action(killed, ActionRecord(seq=1, host="h3", kind="replace"))
        assert log.mark_interrupted(cluster_id="c") == 1
        assert [a.status for a in log.actions(ActionFilter(host="h3"))] == ["interrupted"]
        assert log.get_run(killed).status == "interrupted"  # type: ignore[union-attr]
    finally:
        log.close()


WRITER = """
import sys
from reconciler.store import ActionRecord, AuditLog
log = AuditLog(sys.argv[1])
run = log.start_run(cluster_id="c", trigger="t", source=sys.argv[2], digest=None)
for i in range(int(sys.argv[3])):
    row = log.start_action(run, ActionRecord(seq=i, host=sys.argv[2], kind="create"))
    log.finish_action(row, status="succeeded")
log.finish_run(run, status="succeeded")
log.close()
"""


def test_two_controllers_writing_at_once_lose_no_row(db_url: str) -> None:
    AuditLog(db_url).close()
    per_writer = 60
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, db_url, f"w{i}", str(per_writer)]) for i in range(2)
    ]
    assert [w.wait(120) for w in writers] == [0, 0]
    log = AuditLog(db_url)
    try:
        rows = log.actions(ActionFilter(limit=None))
        assert len(rows) == 2 * per_writer
        assert {r.host for r in rows} == {"w0", "w1"}
        assert all(r.status == "succeeded" for r in rows)
    finally:
        log.close()


def test_apply_on_real_engines_audits_into_postgresql(clean_fleet: list[Engine], tmp_path: Path) -> None:
    try:
        url = fresh_database(f"apply_{uuid.uuid4().hex[:10]}")
    except PostgresError as exc:
        pytest.fail(f"PostgreSQL could not be started: {exc}", pytrace=False)
    fleet = Fleet(clean_fleet, tmp_path)
    run = fleet.cli("apply", str(fleet.file), "--db", url, "--json")
    assert run.code == 0, run.stderr
    rows = fleet.cli("audit", "--db", url, "--json", "--kind", "create")
    assert rows.code == 0, rows.stderr
    assert len(rows.json()["actions"]) == 6 and all(
        r["status"] == "succeeded" for r in rows.json()["actions"]
    )


def _quick_retry_controller(fleet: Fleet, url: str, tmp_path: Path) -> ControllerProcess:
    """`run` on ``fleet`` with the audit log at ``url``: resync in minutes, a failed pass retried in
    0.2..1 s, so that a repair within seconds is the retry's, not the clock's."""
    args = ("--interval", "600", "--backoff-base", "0.2", "--backoff-max", "1")
    return ControllerProcess(fleet.file, url, tmp_path / "ctl.log", *args, env=fleet.env)


def test_database_down_the_controller_pauses_and_resumes_by_itself(
    clean_fleet: list[Engine], tmp_path: Path
) -> None:
    from testbed.controller_harness import wait_for
    from testbed.pgserver import ensure_postgres, stop_postgres

    url = fresh_database(f"down_{uuid.uuid4().hex[:10]}")
    fleet = Fleet(clean_fleet, tmp_path)
    ctl = _quick_retry_controller(fleet, url, tmp_path)
    try:
        ctl.wait_ready()
        host2 = fleet.engines[1]
        wait_for(lambda: "registrator" in fleet.containers(host2), 20, "convergence")
        stop_postgres()
        try:
            client = host2.client()
            client.containers.get("registrator").remove(force=True)
            client.close()
            wait_for(
                lambda: (ctl.get("/status")[1] or "").find('"pass_error": null') < 0,
                15,
                "the controller to report the failed pass",
            )
            time.sleep(1.5)
            assert "registrator" not in fleet.containers(host2)  # nothing done without its audit row
            assert 'outcome="error"' in ctl.get("/metrics")[1]
        finally:
            ensure_postgres()
        wait_for(lambda: "registrator" in fleet.containers(host2), 30, "the repair once the database is back")
        wait_for(lambda: '"pass_error": null' in ctl.get("/status")[1], 10, "the error to clear")
        rows = fleet.cli("audit", "--db", url, "--json", "--host", "host2", "--kind", "create").json()[
            "actions"
        ]
        assert [r["container"] for r in rows if r["status"] == "succeeded"].count("registrator") == 2
        assert "pass failed" in ctl.log()
    finally:
        ctl.stop()


def test_database_read_only_the_controller_pauses_and_resumes_by_itself(
    clean_fleet: list[Engine], tmp_path: Path
) -> None:
    from testbed.controller_harness import wait_for
    from testbed.pgserver import set_read_only

    name = f"ro_{uuid.uuid4().hex[:10]}"
    url = fresh_database(name)
    fleet = Fleet(clean_fleet, tmp_path)
    ctl = _quick_retry_controller(fleet, url, tmp_path)
    try:
        ctl.wait_ready()
        host3 = fleet.engines[2]
        wait_for(lambda: "registrator" in fleet.containers(host3), 20, "convergence")
        set_read_only(name, True)
        try:
            client = host3.client()
            client.containers.get("registrator").remove(force=True)
            client.close()
            wait_for(
                lambda: '"pass_error": null' not in ctl.get("/status")[1], 15, "the failed pass reported"
            )
            assert "read-only" in ctl.get("/status")[1]
            time.sleep(1.5)
            assert "registrator" not in fleet.containers(host3)  # nothing done without its audit row
        finally:
            set_read_only(name, False)
        wait_for(lambda: "registrator" in fleet.containers(host3), 30, "the repair once writable again")
        wait_for(lambda: '"pass_error": null' in ctl.get("/status")[1], 10, "the error to clear")
    finally:
        ctl.stop()


def test_a_live_peers_open_run_is_left_alone_a_dead_ones_is_closed(db_url: str) -> None:
    log = AuditLog(db_url)
    try:
        live = log.start_run(cluster_id="c", trigger="t", source="s", digest=None, lock_holder="session-live")
        log.start_action(live, ActionRecord(seq=1, host="h1", kind="replace"))
        dead = log.start_run(cluster_id="c", trigger="t", source="s", digest=None, lock_holder="session-gone")
        log.start_action(dead, ActionRecord(seq=1, host="h2", kind="replace"))
        assert log.mark_interrupted(cluster_id="c", alive=lambda owner, holder: holder == "session-live") == 1
        assert log.get_run(live).status == "running"  # type: ignore[union-attr]
        assert log.get_run(dead).status == "interrupted"  # type: ignore[union-attr]
        assert [a.status for a in log.actions(ActionFilter(host="h1"))] == ["started"]
    finally:
        log.close()


def test_outcomes_the_database_missed_are_written_once_it_is_back() -> None:
    from testbed.pgserver import ensure_postgres, stop_postgres

    url = fresh_database(f"missed_{uuid.uuid4().hex[:10]}")
    log = AuditLog(url)
    try:
        run = log.start_run(cluster_id="c", trigger="t", source="s", digest=None)
        row = log.start_action(run, ActionRecord(seq=1, host="h1", kind="replace"))
        stop_postgres()  # the Docker action is done; then the database goes away
        try:
            with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
                log.finish_action(row, status="succeeded", container_id="new-id")
            with pytest.raises(Exception):  # noqa: B017
                log.finish_run(run, status="failed", error="the pass stopped")
            assert log.pending == 2
        finally:
            ensure_postgres()
        assert log.flush_pending() == 2 and log.pending == 0
        [action] = log.actions(ActionFilter(run_id=run))
        assert (action.status, action.container_id) == ("succeeded", "new-id")
        assert log.get_run(run).status == "failed"  # type: ignore[union-attr]
        assert log.mark_interrupted(cluster_id="c") == 0  # nothing is left to read as interrupted
    finally:
        log.close()


def test_an_action_recorded_after_the_database_came_back_reads_as_it_happened(
    clean_fleet: list[Engine], tmp_path: Path
) -> None:
    """The controller replaces a server (a 5 s graceful leave); the database goes down meanwhile, so the
    action's outcome cannot be written when the Docker work is done. Once the database is back, the
    row reads succeeded (not interrupted, not started) and the run is closed."""
    from testbed.controller_harness import wait_for
    from testbed.pgserver import ensure_postgres, stop_postgres

    url = fresh_database(f"after_{uuid.uuid4().hex[:10]}")
    fleet = Fleet(clean_fleet[:1], tmp_path)
    assert fleet.apply().code == 0
    fleet.wait_consul_healthy()
    ctl = _quick_retry_controller(fleet, url, tmp_path)
    try:
        ctl.wait_ready()
        fleet.doc["consul"]["image"] = AGENT_IMAGE_2
        fleet.write()
        log = AuditLog(url)
        try:
            wait_for(
                lambda: [a for a in log.actions(ActionFilter(kind="replace")) if a.status == "started"],
                20,
                "the replacement to start",
            )
        finally:
            log.close()
        stop_postgres()  # during the server's leave
        try:
            wait_for(lambda: '"pass_error": null' not in ctl.get("/status")[1], 30, "the failed pass")
        finally:
            ensure_postgres()
        log = AuditLog(url)
        try:
            wait_for(
                lambda: [a.status for a in log.actions(ActionFilter(kind="replace"))] == ["succeeded"],
                30,
                "the outcome written once the database is back",
            )
            (replace,) = log.actions(ActionFilter(kind="replace"))

            def run_of_the_replace() -> str:
                return next(r.status for r in log.runs(cluster_id="itest", limit=0) if r.id == replace.run_id)

            # The run's end is the next kept record, written in its own transaction just after the
            # action's (a pass that started since, once the database was back, is rightly "running").
            wait_for(lambda: run_of_the_replace() != "running", 10, "the replace's run to be closed")
            assert run_of_the_replace() == "failed"  # the pass whose records the database did not take
        finally:
            log.close()
    finally:
        ctl.stop()
