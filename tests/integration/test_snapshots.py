"""Snapshots before server changes, against real Consul (testbed/real_consul.py): the snapshot a rolling
upgrade takes before its first server replacement restores into a fresh server, KV data included."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from reconciler.consul_api import ConsulAgent
from testbed.controller_harness import audit_rows
from testbed.fleet import Engine
from testbed.real_consul import ConsulServer
from tests.integration.test_rollout import converge, rollout_fleet

KEY, VALUE = "app/config", b"written before the rollout"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


def test_the_snapshot_before_a_rollout_restores_into_a_fresh_server(
    clean_fleet5: list[Engine], tmp_path: Path
) -> None:
    fleet, img = rollout_fleet(clean_fleet5, tmp_path, 3)
    converge(fleet, 3)
    put = urllib.request.Request(
        f"http://{fleet.doc['hosts'][0]['advertise']}:8500/v1/kv/{KEY}", VALUE, method="PUT"
    )
    with _OPENER.open(put, timeout=5) as answer:
        assert answer.read().strip() == b"true"
    fleet.doc["consul"]["image"] = img.new
    fleet.write()
    run = fleet.apply()
    assert run.code == 0, run.stdout + run.stderr
    in_rollout = (
        "SELECT kind, status FROM actions WHERE run_id = ? AND (kind = 'snapshot' OR role = 'server')"
    )
    rows = audit_rows(fleet.db, in_rollout + " ORDER BY id", run.json()["run_id"])
    assert rows[0] == ("snapshot", "succeeded")  # written and done before the first server was touched
    assert [kind for kind, _status in rows].count("snapshot") == 1  # one per pass
    assert [kind for kind, _status in rows[1:]] == ["replace"] * 3
    [listed] = fleet.cli("snapshots", "--db", str(fleet.db), "--json", "--verify").json()["snapshots"]
    assert (listed["file"], listed["check"]) == ("kept", "ok") and listed["raft_index"] > 0
    path = Path(listed["path"])
    assert path.parent == tmp_path / "snapshots" and path.stat().st_mode & 0o777 == 0o600
    with ConsulServer(tmp_path / "fresh") as fresh, path.open("rb") as archive:
        assert fresh.kv_get(KEY) is None
        ConsulAgent(fresh.address, timeout=60).restore_snapshot(archive)
        assert fresh.kv_get(KEY) == VALUE
