"""Snapshots before server changes: the archive check, names and pruning (pure and on a temporary folder),
GET/PUT /v1/snapshot against the Consul double, the executor's gate (no Docker: what it would carry out
is recorded), and `snapshots --json` on a SQLite audit database."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from desired_state.load import TopologyError, load_topology
from reconciler.cli import app
from reconciler.consul_api import ConsulAgent, ConsulError
from reconciler.execute import ApplyResult, Executor
from reconciler.gates import ClusterView
from reconciler.plan import Action, Plan, make_plan
from reconciler.snapshots import (
    SnapshotError,
    SnapshotTaker,
    default_directory,
    file_name,
    parse_file_name,
    prune,
    save_archive,
    snapshot_files,
    verify_archive,
    verify_file,
)
from reconciler.store import ActionFilter, AuditLog
from testbed.consul_double import ConsulDouble, snapshot_archive
from tests.unit.test_plan import CLUSTER, THREE_SERVERS, converged, desired, host, ours, spec_of, with_host

TOKEN = "test-management-token"
T0 = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)


# --- the archive ----------------------------------------------------------------------------------


def tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def sums(*members: tuple[str, bytes]) -> bytes:
    return "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in members).encode()


META = json.dumps({"Version": 1, "ID": "2-42-1", "Index": 42, "Term": 2, "Size": 5}).encode() + b"\n"
STATE = b"state"


def verified(data: bytes) -> Any:
    return verify_archive(io.BytesIO(data))


def archive(meta: bytes = META, state: bytes = STATE, listed: bytes | None = None) -> bytes:
    """meta.json, state.bin and a SHA256SUMS of both (or ``listed``)."""
    return tar_gz(
        [
            ("meta.json", meta),
            ("state.bin", state),
            ("SHA256SUMS", listed or sums(("meta.json", meta), ("state.bin", state))),
        ]
    )


def test_a_good_archive_is_read_with_its_raft_index() -> None:
    info = verified(archive())
    assert (info.index, info.term, info.version, info.state_bytes) == (42, 2, 1, 5)
    assert verified(snapshot_archive(7, b"x" * 100_000)).index == 7  # the double's, as Consul writes them


CASES = {
    "empty": (b"", "not a readable tar archive"),
    "not-gzip": (b"hello, not gzip", "not a gzip stream"),
    "truncated": (snapshot_archive(7, b"x" * 100_000)[:-400], "truncated"),
    "no-meta": (
        tar_gz([("state.bin", STATE), ("SHA256SUMS", sums(("state.bin", STATE)))]),
        "has no meta.json",
    ),
    "no-sums": (tar_gz([("meta.json", META), ("state.bin", STATE)]), "has no SHA256SUMS"),
    "bad-checksum": (archive(listed=b"0" * 64 + b"  meta.json\n"), "hash check failed for 'meta.json'"),
    "damaged-state": (
        archive(listed=sums(("meta.json", META), ("state.bin", b"stat3"))),
        "hash check failed for 'state.bin'",
    ),
    "sum-missing": (archive(listed=sums(("meta.json", META))), "SHA256SUMS lists no hash for 'state.bin'"),
    "bad-sums-line": (archive(listed=b"garbage\n"), "SHA256SUMS line 1 is not"),
    "extra-member": (tar_gz([("meta.json", META), ("evil.sh", b"x")]), "unexpected file 'evil.sh'"),
    "no-index": (archive(meta=b"{}"), "meta.json names no raft Index"),
    "size-mismatch": (archive(state=b"st"), "state.bin holds 2 bytes but meta.json says 5"),
}


@pytest.mark.parametrize(("data", "message"), CASES.values(), ids=CASES.keys())
def test_an_unreadable_archive_is_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(SnapshotError, match=re.escape(message)):
        verified(data)


def test_an_empty_file_is_named_empty(tmp_path: Path) -> None:
    (tmp_path / "x.snap").write_bytes(b"")
    with pytest.raises(SnapshotError, match=re.escape("empty (0 bytes)")):
        verify_file(tmp_path / "x.snap")


# --- names, folder, pruning -------------------------------------------------------------------------


def test_file_names_carry_cluster_utc_time_and_index() -> None:
    name = file_name("blog-2", T0 + timedelta(hours=1), 4711)
    assert name == "blog-2-20261201T110000Z-4711.snap"
    parsed = parse_file_name(name)
    assert parsed is not None and (parsed.cluster, parsed.taken_at, parsed.index) == (
        "blog-2",
        T0 + timedelta(hours=1),
        4711,
    )
    assert parse_file_name("blog-2-20261201T110000Z-4711.snap.partial") is None
    assert parse_file_name("notes.txt") is None


def test_the_default_folder_is_beside_the_audit_database(tmp_path: Path) -> None:
    assert default_directory(f"sqlite:///{tmp_path}/state/audit.db") == tmp_path / "state" / "snapshots"
    elsewhere = default_directory("postgresql+psycopg://u:p@db/audit")
    assert elsewhere.name == "snapshots" and "consul-reconciler" in str(elsewhere)


def test_pruning_keeps_the_newest_n_of_the_cluster_only(tmp_path: Path) -> None:
    for minute in range(5):
        (tmp_path / file_name("blog", T0 + timedelta(minutes=minute), 100 + minute)).write_bytes(b"x")
    (tmp_path / file_name("blog-2", T0, 1)).write_bytes(b"other cluster")
    (tmp_path / ".blog-20261201T095900Z-1.partial").write_bytes(b"left by a stopped controller")
    (tmp_path / "README").write_text("not ours")
    removed = prune(tmp_path, "blog", keep=2)
    assert [parse_file_name(p.name).index for p in removed] == [100, 101, 102]  # type: ignore[union-attr]
    assert [parse_file_name(p.name).index for p in snapshot_files(tmp_path, "blog")] == [103, 104]  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            "README",
            file_name("blog-2", T0, 1),
            file_name("blog", T0 + timedelta(minutes=3), 103),
            file_name("blog", T0 + timedelta(minutes=4), 104),
        ]
    )


def test_a_saved_snapshot_is_verified_private_and_renamed_into_place(tmp_path: Path) -> None:
    folder = tmp_path / "snaps"
    archive = snapshot_archive(99, b"state" * 1000)

    def fetch(write: Any) -> int:
        for start in range(0, len(archive), 1000):
            write(archive[start : start + 1000])
        return 99

    saved = save_archive(folder, "blog", fetch, T0)
    assert saved.path == folder / "blog-20261201T100000Z-99.snap"
    assert (saved.size, saved.index, saved.sha256) == (len(archive), 99, hashlib.sha256(archive).hexdigest())
    assert saved.path.read_bytes() == archive
    assert (folder.stat().st_mode & 0o777, saved.path.stat().st_mode & 0o777) == (0o700, 0o600)
    assert [p.name for p in folder.iterdir()] == [saved.path.name]  # no temporary file left


def test_an_unreadable_snapshot_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match=r"the snapshot Consul sent is unreadable: .*truncated"):
        save_archive(tmp_path, "blog", lambda write: write(snapshot_archive(5, b"x" * 50_000)[:-100]), T0)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(SnapshotError, match="cannot create the snapshot folder"):
        save_archive(tmp_path / "file" / "snaps", "blog", lambda write: None, T0)


# --- GET and PUT /v1/snapshot (the Consul double) ------------------------------------------------------


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble(acl_token=TOKEN) as double:
        yield double


def taker(consul: ConsulDouble, folder: Path, token: str | None = TOKEN, keep: int = 10) -> SnapshotTaker:
    servers = {n: consul.address for n, _ in THREE_SERVERS}
    return SnapshotTaker(
        CLUSTER, servers, folder, keep=keep, timeout=5, token=token, hosts={n: n for n, _ in THREE_SERVERS}
    )


def test_a_snapshot_restores_into_a_fresh_server_with_its_kv(consul: ConsulDouble, tmp_path: Path) -> None:
    consul.kv_put("app/config", b"v1")
    told: list[str] = []
    snapshots = taker(consul, tmp_path)
    snapshots._progress = told.append
    saved = snapshots.take("server1")
    assert told == [f"asking the agent at {consul.address} for a raft snapshot"]  # a wait, not a wedge
    assert saved.index == consul.index and saved.leader == "server1"
    assert ("GET", "/v1/snapshot") in consul.requests()  # never ?stale: the leader answers
    with ConsulDouble(acl_token=TOKEN) as fresh, saved.path.open("rb") as archive:
        assert fresh.kv_get("app/config") is None
        ConsulAgent(fresh.address, token=TOKEN).restore_snapshot(archive)
        entry = fresh.kv_get("app/config")
        assert entry is not None and entry["Value"] == b"v1"


@pytest.mark.parametrize(
    ("token", "no_leader", "message"),
    [
        (None, False, "denied GET /v1/snapshot: Permission denied .*management"),
        ("wrong", False, "denied GET /v1/snapshot: ACL not found"),
        (TOKEN, True, "failed GET /v1/snapshot: 500 No cluster leader"),
    ],
    ids=["no-token", "unknown-token", "no-leader"],
)
def test_consul_refusing_a_snapshot_is_a_clear_error(
    consul: ConsulDouble, tmp_path: Path, token: str | None, no_leader: bool, message: str
) -> None:
    consul.set_no_leader(no_leader)
    with pytest.raises(ConsulError, match=message):
        taker(consul, tmp_path, token).take("server1")
    assert snapshot_files(tmp_path, CLUSTER) == []


def test_an_agent_that_does_not_answer_is_passed_over_for_another_server(
    consul: ConsulDouble, tmp_path: Path
) -> None:
    servers = {"server1": "127.0.0.1:9", "server2": consul.address}  # the leader's agent is gone
    saved = SnapshotTaker(CLUSTER, servers, tmp_path, keep=3, timeout=2, token=TOKEN).take("server1")
    assert saved.leader == "server2"
    with pytest.raises(ConsulError, match="does not answer"):
        SnapshotTaker(CLUSTER, {"server1": "127.0.0.1:9"}, tmp_path, keep=3, timeout=2).take("server1")


def test_a_leader_that_cannot_give_a_snapshot_yet_is_asked_again(
    consul: ConsulDouble, tmp_path: Path
) -> None:
    """Met on real Consul right after two servers joined (scale 3 -> 5): raft refuses a snapshot until
    the new configuration is applied; it is a moment, not a reason to hold the rollout."""
    slept: list[float] = []
    servers = {"server1": consul.address}
    consul.snapshot_busy = 2
    taker = SnapshotTaker(CLUSTER, servers, tmp_path, keep=3, timeout=2, token=TOKEN, sleep=slept.append)
    assert taker.take("server1").index > 0
    assert slept == [0.5, 0.5] and consul.snapshot_busy == 0
    # for ever busy: the error after the window, naming Consul's words
    consul.snapshot_busy = 10**6
    taker = SnapshotTaker(CLUSTER, servers, tmp_path, keep=3, timeout=0.3, token=TOKEN)
    with pytest.raises(ConsulError, match="cannot take snapshot now, wait until the configuration entry"):
        taker.take("server1")


# --- the gate: no snapshot, no server change ----------------------------------------------------------


def healthy_view(leader: str = "server1") -> ClusterView:
    names = [n for n, _ in THREE_SERVERS]
    return ClusterView.from_api(
        "10.0.0.1:8300",
        {
            "Servers": [
                {"ID": n, "Node": n, "Address": f"{n}:8300", "Leader": n == leader, "Voter": True}
                for n in names
            ]
        },
        {
            "Healthy": True,
            "FailureTolerance": 1,
            "Servers": [{"Name": n, "SerfStatus": "alive", "Healthy": True} for n in names],
        },
    )


class HealthyGates:
    """Gates of a healthy three-server cluster whose replacements are healthy at once."""

    def view(self, exclude: str | None = None) -> ClusterView:
        return healthy_view()

    def wait_replaced(self, node: str, should_stop: Any, restarted: Any = None) -> None:
        return None

    def wait_removed(self, node: str, should_stop: Any) -> None:
        return None


class NoDocker(Executor):
    """Carries out nothing: each action performed is recorded (in order) with the snapshots kept then."""

    performed: list[tuple[str, str, int]]

    def _perform(self, action: Action) -> str | None:
        kept = len(snapshot_files(self._snapshots.directory, CLUSTER)) if self._snapshots else 0
        self.performed.append((action.kind.value, f"{action.host}/{action.name}", kept))
        return "new-id"


def run(audit: AuditLog, plan: Plan, snapshots: SnapshotTaker | None) -> tuple[ApplyResult, NoDocker]:
    run_id = audit.start_run(cluster_id=CLUSTER, trigger="test", source="test", digest=None)
    stand_in: Any = HealthyGates()
    none: Any = None
    executor = NoDocker(
        none,
        {},
        audit,
        run_id,
        CLUSTER,
        gates=stand_in,
        snapshots=snapshots,
        desired_servers=frozenset(n for n, _ in THREE_SERVERS),
    )
    executor.performed = []
    return executor.apply(plan), executor


def upgrade(clients_only: bool = False, server2_down: bool = False) -> Plan:
    before = desired(consul={"image": "hashicorp/consul:1.19"})
    after = desired(
        consul={"image": "hashicorp/consul:1.19", "client_image": "hashicorp/consul:1.20"}
        if clients_only
        else {"image": "hashicorp/consul:1.20"}
    )
    observed = converged(before)
    if server2_down:  # its agent has exited: the replacement is its repair
        exited = ours(spec_of(before, "server2"), "exited")
        seen = next(h for h in observed.hosts if h.name == "server2")
        managed = tuple(exited if c.name == exited.name else c for c in seen.managed)
        observed = with_host(observed, replace(seen, managed=managed))
    return make_plan(after, observed)


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(str(tmp_path / "state" / "audit.db"))
    yield log
    log.close()


def kinds(audit: AuditLog) -> list[tuple[str, str, str]]:
    rows = audit.actions(ActionFilter(limit=None))
    return [(a.kind, a.node or "", a.status) for a in sorted(rows, key=lambda a: a.id)]


def test_one_snapshot_before_the_first_server_change_of_a_pass(
    consul: ConsulDouble, audit: AuditLog, tmp_path: Path
) -> None:
    folder = tmp_path / "snaps"
    applied, executor = run(audit, upgrade(), taker(consul, folder))
    servers = [p for p in executor.performed if p[1].endswith("/consul") and p[1].startswith("server")]
    assert [kept for _kind, _what, kept in servers] == [1, 1, 1]  # the snapshot was on disk before the first
    assert consul.requests().count(("GET", "/v1/snapshot")) == 1  # once per pass, not once per server
    rows = kinds(audit)
    assert rows[0] == ("snapshot", "server1", "succeeded")  # written before any server was touched
    assert [r for r in rows if r[0] == "snapshot"] == [rows[0]]
    assert {status for _k, _n, status in rows} == {"succeeded"}
    assert applied.snapshot is not None and applied.snapshot_problem is None
    row = audit.actions(ActionFilter(kind="snapshot"))[0]
    assert (
        row.host == "server1" and "replace of server server2" in row.reason[0]["message"]
    )  # a follower first
    assert (
        f"raft index {applied.snapshot.index}, sha256 {applied.snapshot.sha256}" in row.reason[1]["message"]
    )
    [recorded] = audit.snapshots.newest()
    assert (recorded.path, recorded.size, recorded.raft_index, recorded.sha256) == (
        str(applied.snapshot.path),
        applied.snapshot.size,
        applied.snapshot.index,
        applied.snapshot.sha256,
    )
    assert recorded.run_id == row.run_id and recorded.action_id == row.id


def test_no_snapshot_without_a_server_change(consul: ConsulDouble, audit: AuditLog, tmp_path: Path) -> None:
    applied, executor = run(audit, upgrade(clients_only=True), taker(consul, tmp_path / "snaps"))
    assert executor.performed and all(what.startswith("client") for _k, what, _n in executor.performed)
    assert ("GET", "/v1/snapshot") not in consul.requests()
    assert applied.snapshot is None and audit.snapshots.newest() == []


def test_a_failed_snapshot_holds_every_server_change_and_says_why(
    consul: ConsulDouble, audit: AuditLog, tmp_path: Path
) -> None:
    applied, executor = run(audit, upgrade(), taker(consul, tmp_path / "snaps", token=None))
    assert not any(
        what.startswith("server") and what.endswith("/consul") for _k, what, _n in executor.performed
    )
    waiting = applied.waiting
    assert [r.action.node for r in waiting] == ["server2", "server3", "server1"]
    assert all(r.error and r.error.startswith("no snapshot, so no server change: agent ") for r in waiting)
    assert "Permission denied" in (waiting[0].error or "") and not applied.failed
    assert any(what.startswith("client") for _k, what, _n in executor.performed)  # clients go on
    assert applied.snapshot_problem == waiting[0].error
    [row] = audit.actions(ActionFilter(kind="snapshot"))
    assert row.status == "failed" and "Permission denied" in (row.error or "")
    assert consul.requests().count(("GET", "/v1/snapshot")) == 1  # not retried within the pass
    # the next pass tries again, and with the token it goes on
    again, executor = run(audit, upgrade(), taker(consul, tmp_path / "snaps"))
    assert again.snapshot is not None and not again.waiting


def test_repairing_a_down_server_needs_no_snapshot(
    consul: ConsulDouble, audit: AuditLog, tmp_path: Path
) -> None:
    consul.set_no_leader(True)  # a snapshot is impossible
    applied, _ = run(audit, upgrade(server2_down=True), taker(consul, tmp_path / "snaps"))
    assert [
        r.action.node for r in applied.results if r.status == "succeeded" and r.action.role == "server"
    ] == ["server2"]
    assert [r.action.node for r in applied.waiting] == ["server3", "server1"]
    assert "No cluster leader" in (applied.snapshot_problem or "")


def test_each_pass_takes_its_own_and_only_the_newest_are_kept(
    consul: ConsulDouble, audit: AuditLog, tmp_path: Path
) -> None:
    folder = tmp_path / "snaps"
    times = iter([T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)])
    snapshots = taker(consul, folder, keep=2)
    snapshots._clock = lambda: next(times)
    for _ in range(3):
        consul.kv_put("counter", str(consul.index).encode())  # a new raft index each time
        run(audit, upgrade(), snapshots)
    assert len(snapshot_files(folder, CLUSTER)) == 2
    rows = audit.snapshots.newest()
    assert [r.taken_at for r in rows] == [T0 + timedelta(minutes=2), T0 + timedelta(minutes=1), T0]
    assert [r.pruned_at is not None for r in rows] == [False, False, True]


def test_without_a_taker_nothing_is_asked(consul: ConsulDouble, audit: AuditLog) -> None:
    applied, _ = run(audit, upgrade(), None)
    assert applied.snapshot is None and not applied.waiting
    assert ("GET", "/v1/snapshot") not in consul.requests()


# --- `snapshots` -------------------------------------------------------------------------------------


def test_snapshots_lists_what_was_recorded_newest_first(
    consul: ConsulDouble, audit: AuditLog, tmp_path: Path
) -> None:
    folder = tmp_path / "snaps"
    times = iter([T0, T0 + timedelta(minutes=1)])
    snapshots = taker(consul, folder, keep=1)
    snapshots._clock = lambda: next(times)
    for _ in range(2):
        consul.kv_put("counter", str(consul.index).encode())
        run(audit, upgrade(), snapshots)
    db = audit.url
    runner = CliRunner()
    listed = runner.invoke(app, ["snapshots", "--db", db, "--json", "--verify"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)["snapshots"]
    assert [(r["taken_at"][:19], r["file"], r["check"]) for r in rows] == [
        ("2026-12-01T10:01:00", "kept", "ok"),
        ("2026-12-01T10:00:00", "pruned", None),
    ]
    assert rows[0]["path"] == str(snapshot_files(folder, CLUSTER)[0]) and rows[0]["raft_index"] > 0
    assert set(rows[0]) >= {"size", "sha256", "run_id", "leader", "cluster"}
    text = runner.invoke(app, ["snapshots", "--db", db])
    assert text.exit_code == 0 and "kept" in text.stdout and "pruned" in text.stdout
    assert TOKEN not in text.stdout + listed.stdout
    Path(rows[0]["path"]).write_bytes(b"overwritten")
    checked = json.loads(runner.invoke(app, ["snapshots", "--db", db, "--json", "--verify"]).stdout)[
        "snapshots"
    ]
    assert checked[0]["check"].startswith("UNREADABLE")


def test_snapshots_with_none_recorded(tmp_path: Path) -> None:
    AuditLog(str(tmp_path / "audit.db")).close()
    done = CliRunner().invoke(app, ["snapshots", "--db", str(tmp_path / "audit.db")])
    assert done.exit_code == 0 and "no snapshots recorded" in done.stdout


# --- the setting -------------------------------------------------------------------------------------


def topology(**extra: Any) -> bytes:
    return json.dumps({"cluster": "blog", **extra, "hosts": [host("node1", "10.0.0.1")]}).encode()


def test_snapshots_are_on_by_default_keeping_ten() -> None:
    settings = load_topology(topology()).topology.snapshots
    assert (settings.enabled, settings.dir, settings.keep) == (True, None, 10)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"dir": "snaps"}, "snapshots.dir: .*not an absolute path"),
        ({"dir": "/var/../etc"}, "snapshots.dir: .*contains '..'"),
        ({"keep": 0}, "snapshots.keep: .*greater than or equal to 1"),
        ({"enabled": "yes"}, "snapshots.enabled"),
        ({"every": 1}, "snapshots.every: unknown field"),
    ],
)
def test_bad_snapshot_settings_are_refused_where_they_are(given: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        load_topology(topology(snapshots=given))


def test_snapshots_asked_for_without_gates_is_a_warning() -> None:
    loaded = load_topology(topology(rollout={"gates": False}, snapshots={"enabled": True}))
    assert [w.path for w in loaded.warnings] == ["snapshots"]
    assert load_topology(topology(rollout={"gates": False})).warnings == []
