"""`audit`, `plan` and `status` as an operator runs them, against a real SQLite file: the filters of
`audit --runs`, unknown --kind/--status values, and read commands that never create a database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.plan import Kind
from reconciler.store import ACTION_KINDS, ActionRecord, AuditLog, normalize_url

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)


def cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_RECONCILER_")}
    env.update({"CONSUL_RECONCILER_DB": str(db), "PYTHONPATH": str(ROOT), "NO_COLOR": "1"})
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Three runs: an old failed one on host1, a recent succeeded one on host2, a refused one."""
    path = tmp_path / "audit.db"
    at = [NOW]
    log = AuditLog(normalize_url(str(path)), clock=lambda: at[0])
    try:
        for age, host, status in (
            (timedelta(days=3), "host1", "failed"),
            (timedelta(minutes=5), "host2", "succeeded"),
            (timedelta(minutes=4), None, "refused"),
        ):
            at[0] = NOW - age
            run = log.start_run(cluster_id="dc1", trigger="resync", source="file:t.yaml", digest="ab" * 32)
            if host is not None:
                log.record_action(run, ActionRecord(seq=1, host=host, kind="create"), status=status)
            log.finish_run(run, status=status)
    finally:
        log.close()
    return path


def test_runs_are_filtered_by_status_host_and_since(db: Path) -> None:
    def run_ids(*args: str) -> list[int]:
        result = cli(db, "audit", "--runs", "--json", *args)
        assert result.returncode == 0, result.stderr
        return [row["id"] for row in json.loads(result.stdout)["runs"]]

    assert run_ids() == [3, 2, 1]
    assert run_ids("--status", "failed") == [1]
    assert run_ids("--host", "host2") == [2]
    assert run_ids("--since", "1h") == [3, 2]  # the first run started three days ago
    assert run_ids("--since", "1h", "--status", "refused") == [3]


def test_an_unknown_kind_or_status_is_an_error_that_lists_the_valid_ones(db: Path) -> None:
    kind = cli(db, "audit", "--kind", "creat")
    assert kind.returncode == 1 and kind.stdout == ""
    assert "--kind 'creat' is not an action kind; one of: adopt, adopt-in-place, backoff," in kind.stderr
    status = cli(db, "audit", "--status", "ok")
    assert status.returncode == 1
    assert "--status 'ok' is not an action status; one of: failed, interrupted, skipped," in status.stderr
    runs = cli(db, "audit", "--runs", "--status", "skipped")  # an action status, not a run status
    assert runs.returncode == 1
    assert "is not a run status; one of: failed, interrupted, refused, running, succeeded, waiting" in (
        runs.stderr
    )
    for valid in ("backoff", "degraded", "waiting"):
        assert valid in kind.stderr + status.stderr
    assert cli(db, "audit", "--status", "waiting").returncode == 0


def test_every_kind_the_product_writes_is_a_kind_audit_accepts() -> None:
    assert {k.value for k in Kind} <= ACTION_KINDS
    written = set()
    for module in ("reconciler/assess.py", "reconciler/one_pass.py", "reconciler/snapshot_step.py"):
        text = (ROOT / module).read_text()
        written |= {kind for kind in ("observe", "snapshot", "backoff", "degraded") if f'"{kind}"' in text}
    assert written == {"observe", "snapshot", "backoff", "degraded"} <= ACTION_KINDS


def test_audit_on_a_database_that_does_not_exist_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "state" / "audit.db"
    for args in (("audit",), ("audit", "--runs"), ("snapshots",)):
        result = cli(missing, *args)
        assert result.returncode == 1, (args, result.stdout)
        assert f"no audit database at {missing}: nothing was ever recorded there" in result.stderr
    assert not missing.parent.exists()


def test_plan_and_status_read_an_absent_database_as_empty_and_create_nothing(tmp_path: Path) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text(
        "cluster: dc1\nhosts:\n"
        "  - {name: h1, docker: 'unix:///nonexistent/docker.sock', advertise: 127.0.10.1, role: server}\n"
    )
    missing = tmp_path / "state" / "audit.db"
    plan = cli(missing, "plan", str(topology))
    assert plan.returncode == 1, plan.stderr  # the host cannot be observed: not "nothing to do"
    assert "h1" in plan.stdout + plan.stderr
    status = cli(missing, "status", str(topology), "--json")
    assert status.returncode == 1  # h1 could not be observed: its state is unknown
    (h1,) = json.loads(status.stdout)["hosts"]
    assert h1["reachable"] is False and h1["drift"] is None
    text = cli(missing, "status", str(topology))
    controller_line, _header, row = text.stdout.splitlines()
    assert controller_line == "controller: none has run on this source with this audit database"
    assert text.returncode == 1 and row.split()[-3:] == ["unknown", "-", "-"]  # drift, controller, last
    assert not missing.parent.exists()
