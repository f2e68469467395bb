"""What tells an operator whether a controller runs and what it knows: heartbeats in the audit database
(real SQLite), the status line and exit code built from them, and each host's state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconciler.backoff import HOST_STATES, BackoffTable
from reconciler.cli.status import controller_report, status_code
from reconciler.store import AuditLog, ControllerRow

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def test_heartbeats_record_start_last_seen_and_a_clean_stop(tmp_path: Path) -> None:
    at = [T0]
    log = AuditLog(str(tmp_path / "audit.db"), clock=lambda: at[0])
    try:
        log.state.controller_beat("mgmt:41", source="file:/t.yaml", version="0.1.0", heartbeat_s=10)
        at[0] = T0 + timedelta(seconds=10)
        log.state.controller_beat("mgmt:41", source="file:/t.yaml", version="0.1.0", heartbeat_s=10)
        (row,) = log.state.controllers()
        assert (row.started_at, row.last_seen, row.stopped_at) == (T0, at[0], None)
        assert row.running(at[0] + timedelta(seconds=30))
        assert not row.running(at[0] + timedelta(seconds=31))  # three heartbeats missed: gone
        log.state.controller_stopped("mgmt:41")
        (row,) = log.state.controllers()
        assert row.stopped_at == at[0] and not row.running(at[0])
        at[0] = T0 + timedelta(hours=1)  # the same host:pid later: a new process, a new start
        log.state.controller_beat("mgmt:41", source="file:/t.yaml", version="0.2.0", heartbeat_s=10)
        (row,) = log.state.controllers()
        assert (row.started_at, row.stopped_at, row.version) == (at[0], None, "0.2.0")
    finally:
        log.close()


def _row(
    identity: str, last_seen: datetime, stopped_at: datetime | None = None, source: str = "s"
) -> ControllerRow:
    return ControllerRow(identity, source, "0.1.0", 10.0, T0, last_seen, stopped_at)


def test_status_says_whether_a_controller_runs_and_what_the_host_states_are_worth() -> None:
    now = T0 + timedelta(minutes=5)
    alive = controller_report([_row("mgmt:7", now - timedelta(seconds=4))], "s", now)
    assert alive["running"] and alive["identity"] == "mgmt:7"
    assert alive["summary"] == (
        "controller: running, mgmt:7 (version 0.1.0) since 2026-12-02 09:00:00 UTC, last heard 4s ago"
    )
    killed = controller_report([_row("mgmt:7", now - timedelta(minutes=2))], "s", now)
    assert not killed["running"]
    assert (
        "NOT RUNNING" in killed["summary"]
        and "not heard from since 2026-12-02 09:03:00 UTC (2m ago" in (killed["summary"])
    )
    stopped = controller_report([_row("mgmt:7", now, stopped_at=now)], "s", now)
    assert "stopped at 2026-12-02 09:05:00 UTC" in stopped["summary"] and not stopped["running"]
    other_source = controller_report([_row("mgmt:7", now, source="consul://x/k")], "s", now)
    assert other_source["summary"] == "controller: none has run on this source with this audit database"


def test_status_exit_code_is_plans_convention() -> None:
    converged = [{"drift": []}, {"drift": []}]
    assert status_code(converged) == 0
    assert status_code([{"drift": []}, {"drift": ["create consul"]}]) == 2
    assert status_code([{"drift": ["create consul"]}, {"drift": None}]) == 1  # unknown outranks drift


def test_a_host_stays_unreachable_while_it_backs_off_and_ok_once_it_answers() -> None:
    table = BackoffTable()
    table.failed("h1", 0.0, "engine unreachable", unreachable=True)
    assert table.get("h1").state == "unreachable"
    table.failed("h1", 5.0, "create consul failed: no such image")
    assert table.get("h1").state == "backoff"  # it answers; its action failed
    table.failed("h1", 9.0, "crash loop", degraded=True)
    assert table.get("h1").state == "degraded"
    table.succeeded("h1")
    assert table.get("h1").state == "ok"
    assert set(HOST_STATES) == {"ok", "unreachable", "backoff", "degraded"}
