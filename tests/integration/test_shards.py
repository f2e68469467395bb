"""Three controllers sharing six real engines through a real Consul (run --shard): every host owned by
exactly one; a SIGKILLed controller's hosts taken over (and repaired by their new owner); the audit rows
show no host acted on by two controllers in overlapping windows.

Real Consul's rules hold: a session's TTL is at least 10 s and a dead member's session is invalidated
one to two TTLs after its last renewal, so the membership runs with ``--lock-ttl 10 --lock-delay 5``
(the product's own options): a gained host waits 5 s, a killed member's hosts move within 25 s.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed.controller_harness import ControllerProcess, audit_rows, stop_all, wait_for
from testbed.fleet import Engine
from testbed.real_consul import ConsulServer
from tests.conftest import _cleaned, _engines
from tests.integration.harness import Fleet

KEY = "consul-reconciler/shardtest"
SHARD = ("--shard", "--lock-ttl", "10", "--lock-delay", "5", "--interval", "600")
HOSTS = 6


@pytest.fixture(scope="module")
def fleet6() -> list[Engine]:
    return _engines(HOSTS)


@pytest.fixture
def consul(tmp_path: Path) -> Iterator[ConsulServer]:
    server = ConsulServer(tmp_path / "kvstore").start()
    try:
        yield server
    finally:
        server.kill()


def status(ctl: ControllerProcess) -> dict[str, Any] | None:
    code, body = ctl.get("/status")
    return json.loads(body) if code == 200 else None


def acting(ctls: list[ControllerProcess]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for ctl in ctls:
        doc = status(ctl)
        shard = (doc or {}).get("shard") or {}
        found[shard.get("identity") or str(ctl.proc.pid)] = set(shard.get("acting") or [])
    return found


def running(fleet: Fleet, engine: Engine, name: str) -> bool:
    attrs = fleet.containers(engine).get(name)
    return bool(attrs and attrs["State"]["Running"])


def converged(fleet: Fleet) -> bool:
    return all(running(fleet, e, "consul") and running(fleet, e, "registrator") for e in fleet.engines)


def overlaps(db: Path) -> list[str]:
    """Pairs of actions on one host by two controllers whose [started, finished] windows overlap."""
    rows = audit_rows(
        db,
        "SELECT a.host, r.controller, a.started_at, COALESCE(a.finished_at, a.started_at), a.id "
        "FROM actions a JOIN runs r ON a.run_id = r.id WHERE a.kind != 'observe' AND a.status != 'skipped'",
    )
    by_host: dict[str, list[tuple[datetime, datetime, str, int]]] = {}
    for host, controller, started, finished, row in rows:
        by_host.setdefault(host, []).append(
            (datetime.fromisoformat(str(started)), datetime.fromisoformat(str(finished)), controller, row)
        )
    found = []
    for host, spans in by_host.items():
        spans.sort()
        for i, (_start, end, ctl, row) in enumerate(spans):
            for start2, _end2, ctl2, row2 in spans[i + 1 :]:
                if start2 > end:
                    break
                if ctl2 != ctl:
                    found.append(f"{host}: action {row} by {ctl} and {row2} by {ctl2}")
    return found


def test_three_controllers_share_six_hosts_and_take_over_a_killed_ones(
    fleet6: list[Engine], tmp_path: Path, consul: ConsulServer
) -> None:
    began = time.monotonic()
    fleet = Fleet(_cleaned(fleet6), tmp_path, cluster="shard")
    consul.kv_put(KEY, yaml.safe_dump(fleet.doc, sort_keys=False).encode())
    ctls: list[ControllerProcess] = []
    try:
        for number in range(3):
            ctls.append(
                ControllerProcess(
                    f"consul://{consul.address}/{KEY}",
                    fleet.db,
                    tmp_path / f"controller-{number}.log",
                    *SHARD,
                    env=fleet.env,
                )
            )
        wait_for(lambda: converged(fleet), 60, "the six hosts to converge under three controllers")
        names = {e.name for e in fleet.engines}

        def shared_once() -> dict[str, set[str]] | None:
            shares = acting(ctls)
            every = [h for hosts in shares.values() for h in hosts]
            return shares if sorted(every) == sorted(names) and len(shares) == 3 else None

        shares = wait_for(shared_once, 30, "every host acted on by exactly one controller")
        print("shares:", {k: sorted(v) for k, v in shares.items()})
        # status (the CLI) names every host's owner, as the members' keys say
        shown = fleet.cli("status", f"consul://{consul.address}/{KEY}", "--db", str(fleet.db), "--json")
        report = shown.json()
        assert report["sharded"] is True
        owners = {h["host"]: h["owner"] for h in report["hosts"]}
        assert all(host in shares[owners[host]] for host in names), (owners, shares)
        assert (
            "owner" in fleet.cli("status", f"consul://{consul.address}/{KEY}", "--db", str(fleet.db)).stdout
        )

        # SIGKILL a controller that owns hosts, one that does not lead if there is one (rendezvous over
        # six hosts may give a member none): the leader's server host then moves with the leader lock
        docs = {ctl: status(ctl) or {} for ctl in ctls}
        owning = [c for c in ctls if docs[c]["shard"]["acting"]]
        victim = next((c for c in owning if not docs[c]["leader"]), owning[0])
        lost = set(docs[victim]["shard"]["acting"])
        victim_id = docs[victim]["shard"]["identity"]
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        killed = time.monotonic()
        host = sorted(lost)[0]
        engine = next(e for e in fleet.engines if e.name == host)
        client = engine.client()
        try:
            client.containers.get("registrator").remove(force=True)  # by hand, after the kill
        finally:
            client.close()
        survivors = [c for c in ctls if c is not victim]

        def taken_over() -> bool:
            shares = acting(survivors)
            every = [h for hosts in shares.values() for h in hosts]
            return sorted(every) == sorted(names)

        wait_for(taken_over, 45, "the killed controller's hosts to be taken over")
        print(f"hosts taken over {time.monotonic() - killed:.1f}s after the kill")
        wait_for(lambda: running(fleet, engine, "registrator"), 20, "the new owner to repair the registrator")

        def repaired() -> list[tuple[Any, ...]]:
            return audit_rows(
                fleet.db,
                "SELECT r.controller, r.lock_holder, r.lock_index FROM actions a "
                "JOIN runs r ON a.run_id = r.id "
                "WHERE a.host = ? AND a.container = 'registrator' AND a.status = 'succeeded' "
                "AND r.controller != ?",
                host,
                victim_id,
            )

        repairs = wait_for(repaired, 10, "the repair's row, by another controller")
        assert repairs[0][1] and repairs[0][2], repairs  # fenced: the member session and its index
        # every run that acted names a session and a fencing index; no host by two at once
        unfenced = audit_rows(
            fleet.db,
            "SELECT id FROM runs WHERE id IN (SELECT run_id FROM actions) AND lock_index IS NULL",
        )
        assert unfenced == [], unfenced
        assert overlaps(fleet.db) == []
        actors = {r[0] for r in audit_rows(fleet.db, "SELECT DISTINCT controller FROM runs")}
        assert len(actors) >= 2, actors
    finally:
        stop_all(ctls)
    print(f"the test took {time.monotonic() - began:.1f}s")
