"""The controller with its desired state in Consul KV (the protocol-level double, over real HTTP),
on real engines: edits followed at once, bad documents refused, the source's loss survived, and
two controllers of which exactly one acts.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul as pyconsul
import pytest
import yaml

from tests.agent_image import ACL_TOKEN, ensure_acl_agent_images
from tests.consul_double import ConsulDouble
from tests.fleet import AGENT_IMAGE_1, AGENT_IMAGE_2, Engine
from tests.integration.controller_harness import ControllerProcess, audit_rows, stop_all, wait_for
from tests.integration.harness import Fleet

KEY = "consul-reconciler/topology"
LONG_INTERVAL = "600"
FAST_LOCK = ("--lock-ttl", "2", "--lock-delay", "1")


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    double = ConsulDouble(min_ttl=1.0).start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def kv_fleet(clean_fleet: list[Engine], tmp_path: Path, consul: ConsulDouble) -> Fleet:
    fleet = Fleet(clean_fleet, tmp_path, cluster="kv")
    push(consul, fleet)
    return fleet


def push(consul: ConsulDouble, fleet: Fleet) -> None:
    consul.kv_put(KEY, yaml.safe_dump(fleet.doc, sort_keys=False).encode())


def source(consul: ConsulDouble) -> str:
    return f"consul://{consul.address}/{KEY}"


@pytest.fixture
def controllers(tmp_path: Path) -> Iterator[Any]:
    started: list[ControllerProcess] = []

    def start(fleet: Fleet, consul: ConsulDouble, *args: str, db: Path | None = None) -> ControllerProcess:
        proc = ControllerProcess(
            source(consul),
            db or fleet.db,
            tmp_path / f"controller-{len(started)}.log",
            *args,
            env=fleet.env,
        )
        started.append(proc)
        return proc

    yield start
    stop_all(started)


def running(fleet: Fleet, engine: Engine, name: str, image: str | None = None) -> bool:
    attrs = fleet.containers(engine).get(name)
    return bool(attrs and attrs["State"]["Running"] and (image is None or attrs["Config"]["Image"] == image))


def converged(fleet: Fleet, image: str = AGENT_IMAGE_1) -> bool:
    return all(running(fleet, e, "consul", image) and running(fleet, e, "registrator") for e in fleet.engines)


def status(ctl: ControllerProcess) -> dict[str, Any]:
    code, body = ctl.get("/status")
    assert code == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


def test_kv_edit_replaces_at_once_and_status_is_written_back(
    kv_fleet: Fleet, consul: ConsulDouble, controllers: Any
) -> None:
    ctl = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *FAST_LOCK)
    ctl.wait_ready()
    wait_for(lambda: converged(kv_fleet), 30, "the fleet to converge from the KV document")
    before = kv_fleet.ids()
    kv_fleet.doc["consul"]["client_image"] = AGENT_IMAGE_2
    push(consul, kv_fleet)
    for engine in kv_fleet.engines[1:]:
        wait_for(
            lambda e=engine: running(kv_fleet, e, "consul", AGENT_IMAGE_2), 15, "the KV edit to apply"
        )
    assert kv_fleet.ids()[("host1", "consul")] == before[("host1", "consul")]
    triggers = {r[0] for r in audit_rows(kv_fleet.db, "SELECT trigger FROM runs")}
    assert "interval" not in ",".join(triggers)
    # the status documents, readable in Consul's UI
    reader = kv_client(consul)
    entry = wait_for(lambda: reader.kv.get("consul-reconciler/status/kv/host2")[1], 10, "the status of host2")
    doc = json.loads(entry["Value"])
    assert doc["host"] == "host2" and doc["observed"] == {"consul": "running", "registrator": "running"}
    # the run rows carry the lock holder and its fencing token
    rows = audit_rows(kv_fleet.db, "SELECT lock_holder, lock_index FROM runs WHERE lock_holder IS NOT NULL")
    assert rows and all(index and index >= 1 for _, index in rows)


def test_invalid_kv_document_is_refused_and_nothing_torn_down(
    kv_fleet: Fleet, consul: ConsulDouble, controllers: Any
) -> None:
    ctl = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *FAST_LOCK)
    ctl.wait_ready()
    wait_for(lambda: converged(kv_fleet), 30, "the fleet to converge")
    good = status(ctl)["desired_digest"]
    before = kv_fleet.ids()
    consul.kv_put(KEY, b"cluster: kv\nhosts: []\n")
    refused = wait_for(
        lambda: audit_rows(kv_fleet.db, "SELECT error FROM runs WHERE status='refused'"),
        10,
        "the rejection to be audited",
    )
    assert "hosts" in refused[0][0] and "keeping the last valid state" in refused[0][0]
    time.sleep(0.5)
    assert kv_fleet.ids() == before
    doc = status(ctl)
    assert doc["desired_digest"] == good and doc["desired_state_valid"] is False
    assert doc["enforcing"]["digest"] == good
    client = kv_fleet.engines[2].client()
    try:
        client.containers.get("registrator").remove(force=True)
    finally:
        client.close()
    wait_for(
        lambda: running(kv_fleet, kv_fleet.engines[2], "registrator"), 10, "repair from the last good state"
    )


def test_consul_down_key_deleted_or_empty_keeps_enforcing(
    kv_fleet: Fleet, consul: ConsulDouble, controllers: Any
) -> None:
    ctl = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, "--no-leader-election")
    ctl.wait_ready()
    wait_for(lambda: converged(kv_fleet), 30, "the fleet to converge")
    host3 = kv_fleet.engines[2]
    for breakage, what in (
        (lambda: kv_client(consul).kv.delete(KEY), "does not exist"),
        (lambda: consul.kv_put(KEY, b""), "is empty"),
        (consul.take_down, "unreachable"),
    ):
        breakage()
        wait_for(lambda w=what: w in (status(ctl)["source_error"] or ""), 15, f"the source error ({what})")
        metrics = ctl.get("/metrics")[1]
        assert "consul_reconciler_desired_state_source_up 0.0" in metrics
        client = host3.client()
        try:
            client.containers.get("consul").remove(force=True)
        finally:
            client.close()
        wait_for(lambda: running(kv_fleet, host3, "consul"), 15, f"repair while the key {what}")
        if what == "unreachable":  # the status command, too, falls back to the kept document
            shown = kv_fleet.cli("status", source(consul), "--db", str(kv_fleet.db), "--json")
            assert shown.code == 0, shown.stderr
            assert "unreachable" in shown.json()["source_problem"]
            assert {h["host"] for h in shown.json()["hosts"]} == {"host1", "host2", "host3"}
        else:
            push(consul, kv_fleet)
            wait_for(lambda: status(ctl)["source_error"] is None, 15, "the source to be back")
    consul.bring_up()
    wait_for(lambda: status(ctl)["source_error"] is None, 30, "Consul to be back")


def test_every_server_down_and_consul_with_them_restart_brings_them_back(
    kv_fleet: Fleet, consul: ConsulDouble, controllers: Any
) -> None:
    """The desired state lives in the very cluster being managed: with every agent (and so Consul)
    down, a controller that starts now must still bring them back, from the kept document, with
    leader election on: no leader can be known, and creating what is missing needs none."""
    first = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *FAST_LOCK)
    first.wait_ready()
    wait_for(lambda: converged(kv_fleet), 30, "the fleet to converge")
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0
    consul.take_down()
    for engine in kv_fleet.engines:
        client = engine.client()
        try:
            for container in client.containers.list(all=True):
                container.remove(force=True)
        finally:
            client.close()
    second = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *FAST_LOCK)
    wait_for(lambda: converged(kv_fleet), 40, "the fleet to come back from the kept document")
    doc = status(second)
    assert doc["enforcing"]["from"] == "kept document"
    assert "unreachable" in (doc["source_error"] or "")
    assert doc["leader"] is False  # it never led: it only created what was missing
    triggers = {t for (t,) in audit_rows(kv_fleet.db, "SELECT trigger FROM runs WHERE lock_index IS NULL")}
    assert any("repairs only" in t for t in triggers), triggers


def test_two_controllers_one_acts_and_the_other_takes_over(
    kv_fleet: Fleet, consul: ConsulDouble, controllers: Any, tmp_path: Path
) -> None:
    a = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *FAST_LOCK)
    b = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *FAST_LOCK)
    wait_for(lambda: converged(kv_fleet), 30, "the fleet to converge")
    wait_for(lambda: status(a)["leader"] or status(b)["leader"], 10, "a leader")
    leader, standby = (a, b) if status(a)["leader"] else (b, a)
    assert status(standby)["leader"] is False
    acting = {
        r[0]
        for r in audit_rows(
            kv_fleet.db, "SELECT controller FROM runs WHERE id IN (SELECT run_id FROM actions)"
        )
    }
    assert acting == {f"{_hostname()}:{leader.proc.pid}"}
    # SIGKILL the leader: the standby takes over after TTL + lock-delay and converges
    leader.signal(signal.SIGKILL)
    leader.wait(10)
    client = kv_fleet.engines[1].client()
    try:
        client.containers.get("registrator").remove(force=True)
    finally:
        client.close()
    wait_for(lambda: status(standby)["leader"], 20, "the standby to take the lock")
    wait_for(lambda: running(kv_fleet, kv_fleet.engines[1], "registrator"), 20, "the new leader to repair")
    owners = audit_rows(kv_fleet.db, "SELECT DISTINCT lock_index FROM runs WHERE lock_index IS NOT NULL")
    assert len(owners) == 2  # two holders, two fencing tokens


def test_unreachable_consul_no_one_leads_and_only_repairs_go_on(
    kv_fleet: Fleet, consul: ConsulDouble, controllers: Any
) -> None:
    """Consul away: the leader stops leading within the TTL; no leader can be known, so what needs no
    leader still happens (a missing container is created, serialised by Docker's names), and what
    needs one (removing a container no longer desired) waits for a leader."""
    a = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *FAST_LOCK)
    b = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *FAST_LOCK)
    wait_for(lambda: converged(kv_fleet), 30, "the fleet to converge")
    wait_for(lambda: status(a)["leader"] or status(b)["leader"], 10, "a leader")
    consul.take_down()
    took_down = time.monotonic()
    wait_for(lambda: not status(a)["leader"] and not status(b)["leader"], 5, "the leader to stop leading")
    assert time.monotonic() - took_down < 2.0  # within the TTL
    host2 = kv_fleet.engines[1]
    client = host2.client()
    try:
        labels = client.containers.get("registrator").labels
        client.containers.run(  # ours, and no longer desired: removing it needs a leader
            "consul-reconciler-standin/registrator:1", ["extra"], name="extra", labels=labels, detach=True,
            network_mode="none",
        )  # fmt: skip
        client.containers.get("registrator").remove(force=True)
    finally:
        client.close()
    wait_for(lambda: running(kv_fleet, host2, "registrator"), 30, "the missing registrator created")
    time.sleep(2.0)
    assert "extra" in kv_fleet.containers(host2)  # no removal without a leader
    repairs = audit_rows(
        kv_fleet.db,
        "SELECT r.trigger, r.lock_index, a.kind FROM actions a JOIN runs r ON a.run_id = r.id "
        "WHERE a.host='host2' AND a.container='registrator' AND a.status='succeeded' ORDER BY a.id DESC",
    )
    assert "repairs only" in repairs[0][0] and repairs[0][1] is None and repairs[0][2] == "create"
    consul.bring_up()
    wait_for(lambda: "extra" not in kv_fleet.containers(host2), 30, "a leader to remove what is not desired")


def kv_client(double: ConsulDouble) -> pyconsul.Consul:
    return pyconsul.Consul(host="127.0.0.1", port=double.port)


def _hostname() -> str:
    import socket

    return socket.gethostname()


def test_secrets_never_leak_acl_token_and_gossip_key(
    clean_fleet: list[Engine], tmp_path: Path, controllers: Any
) -> None:
    """ACLs on everywhere (the KV double and the agents, default deny), the token given as a file while
    $CONSUL_HTTP_TOKEN holds a stale one: the explicit token wins for the source, the lock, the status
    write-back and the gates, and neither it nor the gossip key shows anywhere."""
    token = ACL_TOKEN
    gossip = base64.b64encode(os.urandom(32)).decode()
    acl_image, _ = ensure_acl_agent_images(clean_fleet)
    double = ConsulDouble(min_ttl=1.0, acl_token=token).start()
    try:
        fleet = Fleet(clean_fleet, tmp_path, cluster="secret")
        fleet.doc["consul"]["image"] = acl_image
        fleet.doc["consul"]["encrypt"] = {"env": "CR_TEST_GOSSIP"}
        fleet.env["CONSUL_HTTP_TOKEN"] = "a-stale-token-that-must-lose"
        fleet.env["CR_TEST_GOSSIP"] = gossip
        token_file = tmp_path / "consul-token"
        token_file.write_text(token + "\n")
        double.kv_put(KEY, yaml.safe_dump(fleet.doc, sort_keys=False).encode())
        ctl = controllers(
            fleet, double, "--interval", LONG_INTERVAL, "--consul-token-file", str(token_file), *FAST_LOCK
        )
        ctl.wait_ready()
        wait_for(lambda: converged(fleet, acl_image), 30, "convergence with a token and a gossip key")
        # the registrators were created only once their agents answered agent/self with the token
        assert audit_rows(fleet.db, "SELECT count(*) FROM actions WHERE status='failed'") == [(0,)]
        reader = pyconsul.Consul(host="127.0.0.1", port=double.port, token=token)
        wait_for(lambda: reader.kv.get("consul-reconciler/status/secret/host1")[1], 10, "status write-back")
        # everywhere a secret could show: logs, metrics, /status, audit DB, KV status, docker inspect, CLI
        places = {
            "controller log": ctl.log(),
            "metrics": ctl.get("/metrics")[1],
            "status": ctl.get("/status")[1],
            "audit db": fleet.db.read_bytes().decode("latin-1"),
            "kv status": json.dumps(
                [e["Value"].decode() for e in reader.kv.get("consul-reconciler/", recurse=True)[1]]
            ),
            "plan": fleet.cli(
                "plan", source(double), "--db", str(fleet.db), "--json", f"--consul-token-file={token_file}"
            ).stdout,
            "audit": fleet.cli("audit", "--db", str(fleet.db), "--json").stdout,
        }
        for engine in fleet.engines:
            for name, attrs in fleet.containers(engine).items():
                places[f"inspect {engine.name}/{name}"] = json.dumps(attrs)
        for where, text in places.items():
            assert token not in text, f"the ACL token leaked into the {where}"
            assert gossip not in text, f"the gossip key leaked into the {where}"
        exec_run = (
            fleet.engines[0]
            .client()
            .containers.get("consul")
            .exec_run(["cat", "/consul/config/encrypt.json"])
        )
        assert json.loads(exec_run.output) == {"encrypt": gossip}  # the agent did get it
    finally:
        double.stop()


def test_consul_slow_or_leaderless_keeps_enforcing_and_says_so(
    kv_fleet: Fleet, consul: ConsulDouble, controllers: Any
) -> None:
    ctl = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, "--no-leader-election")
    ctl.wait_ready()
    wait_for(lambda: converged(kv_fleet), 30, "the fleet to converge")
    host2 = kv_fleet.engines[1]
    for fault, heal, what in (
        (lambda: consul.set_no_leader(True), lambda: consul.set_no_leader(False), "No cluster leader"),
        (lambda: consul.set_delay(7.0), lambda: consul.set_delay(0.0), "did not answer in time"),
    ):
        fault()
        client = host2.client()
        try:
            client.containers.get("registrator").remove(force=True)
        finally:
            client.close()
        wait_for(lambda w=what: w in (status(ctl)["source_error"] or ""), 30, f"the source error ({what})")
        assert "consul_reconciler_desired_state_source_up 0.0" in ctl.get("/metrics")[1]
        wait_for(lambda: running(kv_fleet, host2, "registrator"), 30, f"repair while Consul says {what}")
        heal()
        wait_for(lambda: status(ctl)["source_error"] is None, 40, f"the source to recover from {what}")
