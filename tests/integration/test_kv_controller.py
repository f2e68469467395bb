"""The controller with its desired state in Consul KV, on real engines: edits followed at once, bad
documents refused, the source's loss survived, and two controllers of which exactly one acts.

The store is a real Consul server (testbed/real_consul.py, built from Consul's Go module, run as a
process on its own loopback address, as a management cluster of one), and the managed agents are real
Consul too, in containers on the engines. Real Consul's own rules hold: a session's TTL is at least
10 s (``session_ttl_min``) and a dead holder's session is invalidated one to two TTLs after its last
renewal, so the lock here is ``--lock-ttl 10 --lock-delay 5``. Only the last test, a Consul that
answers slowly or has no leader, uses the protocol double (testbed/consul_double.py): a real Consul
cannot be made slow on demand.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul as pyconsul
import pytest
import yaml

from testbed.consul_double import ConsulDouble
from testbed.controller_harness import ControllerProcess, audit_rows, stop_all, wait_for
from testbed.fleet import AGENT_IMAGE_1, Engine
from testbed.real_consul import ACL_TOKEN, REAL_CONSUL_1, REAL_CONSUL_2, ConsulServer
from tests.integration.consul_checks import try_get
from tests.integration.harness import Fleet

KEY = "consul-reconciler/topology"
LONG_INTERVAL = "600"
LOCK_TTL = 10.0  # real Consul's session_ttl_min
LOCK = ("--lock-ttl", "10", "--lock-delay", "5")
FAST_LOCK = ("--lock-ttl", "2", "--lock-delay", "1")  # the double's (its minimum TTL is set to 1 s)
Store = ConsulServer | ConsulDouble


@pytest.fixture
def consul(tmp_path: Path) -> Iterator[ConsulServer]:
    server = ConsulServer(tmp_path / "kvstore").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def double() -> Iterator[ConsulDouble]:
    model = ConsulDouble(min_ttl=1.0).start()
    try:
        yield model
    finally:
        model.stop()


@pytest.fixture
def kv_fleet(clean_fleet: list[Engine], tmp_path: Path, consul: ConsulServer) -> Fleet:
    fleet = Fleet(clean_fleet, tmp_path, cluster="kv")
    fleet.use_real_consul()
    push(consul, fleet)
    return fleet


def push(consul: Store, fleet: Fleet) -> None:
    consul.kv_put(KEY, yaml.safe_dump(fleet.doc, sort_keys=False).encode())


def source(consul: Store) -> str:
    return f"consul://{consul.address}/{KEY}"


@pytest.fixture
def controllers(tmp_path: Path) -> Iterator[Any]:
    started: list[ControllerProcess] = []

    def start(fleet: Fleet, consul: Store, *args: str, db: Path | None = None) -> ControllerProcess:
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


def converged(fleet: Fleet, image: str = REAL_CONSUL_1) -> bool:
    return all(running(fleet, e, "consul", image) and running(fleet, e, "registrator") for e in fleet.engines)


def status(ctl: ControllerProcess) -> dict[str, Any]:
    code, body = ctl.get("/status")
    assert code == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


def test_kv_edit_replaces_at_once_and_status_is_written_back(
    kv_fleet: Fleet, consul: ConsulServer, controllers: Any
) -> None:
    ctl = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *LOCK)
    ctl.wait_ready()
    wait_for(lambda: converged(kv_fleet), 30, "the fleet to converge from the KV document")
    before = kv_fleet.ids()
    kv_fleet.doc["consul"]["client_image"] = REAL_CONSUL_2
    push(consul, kv_fleet)
    for engine in kv_fleet.engines[1:]:
        wait_for(lambda e=engine: running(kv_fleet, e, "consul", REAL_CONSUL_2), 30, "the KV edit to apply")
    assert kv_fleet.ids()[("host1", "consul")] == before[("host1", "consul")]
    triggers = {r[0] for r in audit_rows(kv_fleet.db, "SELECT trigger FROM runs")}
    assert "interval" not in ",".join(triggers)
    # the status documents, readable in Consul's UI
    reader = kv_client(consul)

    def host2_status() -> dict[str, Any] | None:
        # the first pass wrote one too, with what it observed before it created anything: nothing
        entry = reader.kv.get("consul-reconciler/status/kv/host2")[1]
        doc: dict[str, Any] | None = json.loads(entry["Value"]) if entry else None
        return doc if doc and doc["observed"] else None

    doc = wait_for(host2_status, 10, "the status of host2 after a pass that observed its containers")
    assert doc["host"] == "host2" and doc["observed"] == {"consul": "running", "registrator": "running"}
    # the run rows carry the lock holder and its fencing token
    rows = audit_rows(kv_fleet.db, "SELECT lock_holder, lock_index FROM runs WHERE lock_holder IS NOT NULL")
    assert rows and all(index and index >= 1 for _, index in rows)


def test_invalid_kv_document_is_refused_and_nothing_torn_down(
    kv_fleet: Fleet, consul: ConsulServer, controllers: Any
) -> None:
    ctl = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *LOCK)
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
    kv_fleet: Fleet, consul: ConsulServer, controllers: Any
) -> None:
    ctl = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, "--no-leader-election")
    ctl.wait_ready()
    wait_for(lambda: converged(kv_fleet), 30, "the fleet to converge")
    host3 = kv_fleet.engines[2]
    for breakage, what in (
        (lambda: consul.kv_delete(KEY), "does not exist"),
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
            assert shown.code in (0, 2), shown.stderr  # converged or drifting, every host known (not 1)
            assert "unreachable" in shown.json()["source_problem"]
            assert {h["host"] for h in shown.json()["hosts"]} == {"host1", "host2", "host3"}
        else:
            push(consul, kv_fleet)
            wait_for(lambda: status(ctl)["source_error"] is None, 15, "the source to be back")
    consul.bring_up()
    wait_for(lambda: status(ctl)["source_error"] is None, 30, "Consul to be back")


def test_every_server_down_and_consul_with_them_restart_brings_them_back(
    kv_fleet: Fleet, consul: ConsulServer, controllers: Any
) -> None:
    """The desired state lives in the very cluster being managed: with every agent (and so Consul)
    down, a controller that starts now must still bring them back, from the kept document, with
    leader election on: no leader can be known, and creating what is missing needs none."""
    first = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *LOCK)
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
    second = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *LOCK)
    wait_for(lambda: converged(kv_fleet), 40, "the fleet to come back from the kept document")
    doc = status(second)
    assert doc["enforcing"]["from"] == "kept document"
    assert "unreachable" in (doc["source_error"] or "")
    assert doc["leader"] is False  # it never led: it only created what was missing
    triggers = {t for (t,) in audit_rows(kv_fleet.db, "SELECT trigger FROM runs WHERE lock_index IS NULL")}
    assert any("repairs only" in t for t in triggers), triggers


def test_two_controllers_one_acts_and_the_other_takes_over(
    kv_fleet: Fleet, consul: ConsulServer, controllers: Any, tmp_path: Path
) -> None:
    a = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *LOCK)
    b = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *LOCK)
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
    # SIGKILL the leader: real Consul invalidates its session one to two TTLs after its last renewal,
    # then the lock-delay runs; only then may the standby take the lock and act
    leader.signal(signal.SIGKILL)
    leader.wait(10)
    killed = time.monotonic()
    client = kv_fleet.engines[1].client()
    try:
        client.containers.get("registrator").remove(force=True)
    finally:
        client.close()
    wait_for(lambda: status(standby)["leader"], 2 * LOCK_TTL + 15, "the standby to take the lock")
    took_over = time.monotonic() - killed
    print(f"the standby took the lock {took_over:.1f} s after the leader was killed")
    assert took_over >= LOCK_TTL * 0.5, took_over  # not before the session could have expired
    wait_for(lambda: running(kv_fleet, kv_fleet.engines[1], "registrator"), 20, "the new leader to repair")
    owners = audit_rows(kv_fleet.db, "SELECT DISTINCT lock_index FROM runs WHERE lock_index IS NOT NULL")
    assert len(owners) == 2  # two holders, two fencing tokens
    # the lock key deleted under the new leader: it stands down at once (it watches its key), and
    # takes the key again; a second controller started meanwhile never leads beside it
    third = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *LOCK)
    wait_for(lambda: third.get("/status")[0] == 200, 30, "the third controller to answer")  # a standby
    consul.kv_delete(f"{KEY}.leader")
    leaders_seen: list[int] = []

    def one_leader_again() -> bool:
        count = sum(1 for ctl in (standby, third) if status(ctl)["leader"])
        leaders_seen.append(count)
        return count == 1

    wait_for(one_leader_again, 2 * LOCK_TTL + 15, "a leader again after the key was deleted", interval=0.1)
    assert max(leaders_seen) <= 1, leaders_seen
    assert consul.kv_get(f"{KEY}.leader") is not None


def test_kv_commands_against_real_consul_write_only_by_check_and_set(
    consul: ConsulServer, tmp_path: Path
) -> None:
    """push creates (CAS on absent), leaves an unchanged document alone, updates with a CAS on the index
    it read; pull gives the bytes back; an edit that loses the race to another writer is a conflict that
    overwrites nothing and keeps the edit. (history and diff read the audit database, not Consul.)"""
    url = source(consul)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "CONSUL_RECONCILER"))}

    def kv(*args: str, editor: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = {"EDITOR": editor, "VISUAL": ""} if editor else {}
        return subprocess.run(
            [sys.executable, "-m", "reconciler.cli", "kv", *args],
            capture_output=True, text=True, env={**env, **extra}, timeout=60,
        )  # fmt: skip

    def index() -> int:
        return int(json.loads(consul._request("GET", f"/v1/kv/{KEY}"))[0]["ModifyIndex"])

    host = {"name": "h1", "docker": "unix:///x.sock", "advertise": "127.0.20.9", "role": "server"}
    doc: dict[str, Any] = {"cluster": "kvcli", "hosts": [host]}
    topology = tmp_path / "topology.yaml"
    topology.write_text(yaml.safe_dump(doc))
    created = kv("push", str(topology), "--consul", url, "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["result"] == "created"
    first = index()
    assert kv("push", str(topology), "--consul", url).stdout.startswith("unchanged: ")
    assert index() == first  # nothing written
    doc["hosts"][0]["advertise"] = "127.0.20.10"
    topology.write_text(yaml.safe_dump(doc))
    updated = json.loads(kv("push", str(topology), "--consul", url, "--json").stdout)
    assert (updated["result"], updated["previous_modify_index"], updated["modify_index"]) == (
        "updated",
        first,
        index(),
    )
    pulled = kv("pull", "--consul", url)
    assert pulled.returncode == 0 and pulled.stdout == topology.read_text()
    # an editor during whose edit another operator writes the key: Consul refuses edit's CAS write
    other = yaml.safe_dump({**doc, "cluster": "other"}).encode()
    script = tmp_path / "editor.py"
    script.write_text(
        "import sys, urllib.request\n"
        "path = sys.argv[-1]\n"
        "text = open(path).read()\n"
        f"request = urllib.request.Request('http://{consul.address}/v1/kv/{KEY}', data={other!r},"
        " method='PUT')\n"
        "urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request).read()\n"
        "open(path, 'w').write(text.replace('127.0.20.10', '127.0.20.11'))\n"
    )
    raced = kv("edit", "--consul", url, editor=f"{sys.executable} -S {script}")
    assert raced.returncode == 1, raced.stdout + raced.stderr
    assert "changed in Consul since you opened it" in raced.stderr, raced.stderr
    assert "nothing was written" in raced.stderr
    kept = Path(raced.stderr.split("your edit is kept in ", 1)[1].split(";", 1)[0])
    assert "127.0.20.11" in kept.read_text()  # the edit is not lost
    kept.unlink()
    assert consul.kv_get(KEY) == other  # the other operator's write stands
    plain = tmp_path / "plain.py"
    plain.write_text(
        "import sys\np = sys.argv[-1]\nt = open(p).read()\nopen(p, 'w').write(t.replace('other', 'edited'))\n"
    )
    before = index()
    edited = kv("edit", "--consul", url, editor=f"{sys.executable} -S {plain}")
    assert edited.returncode == 0, edited.stderr
    assert index() > before and b"cluster: edited" in (consul.kv_get(KEY) or b"")


def test_unreachable_consul_no_one_leads_and_only_repairs_go_on(
    kv_fleet: Fleet, consul: ConsulServer, controllers: Any
) -> None:
    """Consul away: the leader stops leading within the TTL; no leader can be known, so what needs no
    leader still happens (a missing container is created, serialised by Docker's names), and what
    needs one (removing a container no longer desired) waits for a leader."""
    a = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *LOCK)
    b = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, *LOCK)
    wait_for(lambda: converged(kv_fleet), 30, "the fleet to converge")
    wait_for(lambda: status(a)["leader"] or status(b)["leader"], 10, "a leader")
    leader = a if status(a)["leader"] else b
    consul.take_down()
    took_down = time.monotonic()
    wait_for(
        lambda: not status(a)["leader"] and not status(b)["leader"],
        LOCK_TTL + 5,
        "the leader to stop leading",
    )
    stood_down = time.monotonic() - took_down
    print(f"the leader stopped leading {stood_down:.1f} s after Consul went down")
    assert stood_down < LOCK_TTL  # within the TTL: before anyone else could have taken the lock

    # counted for the alert rule ConsulReconcilerLockLost (monitoring/alerts.yml)
    def leadership() -> list[str]:
        text = leader.get("/metrics")[1]
        return [
            line
            for line in text.splitlines()
            if line.startswith(("consul_reconciler_leader ", "consul_reconciler_leadership_lost_total "))
        ]

    # the gauge says so at once; the loss is counted once the lock's loop gives up on Consul
    assert "consul_reconciler_leader 0.0" in leadership()
    wait_for(
        lambda: (
            leadership() == ["consul_reconciler_leader 0.0", "consul_reconciler_leadership_lost_total 1.0"]
        ),
        LOCK_TTL,
        "the lost lock to be counted",
    )
    host2 = kv_fleet.engines[1]
    before = audit_rows(kv_fleet.db, "SELECT coalesce(max(id), 0) FROM actions")[0][0]
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
        "WHERE a.id > ? AND a.host='host2' AND a.container='registrator' AND a.status='succeeded'",
        before,
    )
    # Both controllers repair without a leader: one creates it; the other may find it created and not
    # yet started (between the rename and the start) and start it too, which Docker answers as done.
    assert [kind for _, _, kind in repairs].count("create") == 1, repairs
    assert {kind for _, _, kind in repairs} <= {"create", "start"}, repairs
    assert all("repairs only" in trigger and lock is None for trigger, lock, _ in repairs), repairs
    consul.bring_up()
    wait_for(lambda: "extra" not in kv_fleet.containers(host2), 30, "a leader to remove what is not desired")


def kv_client(store: Store, token: str | None = None) -> pyconsul.Consul:
    host = store.host if isinstance(store, ConsulServer) else "127.0.0.1"
    return pyconsul.Consul(host=host, port=store.port, token=token)


def _hostname() -> str:
    import socket

    return socket.gethostname()


def test_secrets_never_leak_acl_token_and_gossip_key(
    clean_fleet: list[Engine], tmp_path: Path, controllers: Any
) -> None:
    """ACLs on everywhere (the store and the agents, real Consul, default deny), the token given as a
    file while $CONSUL_HTTP_TOKEN holds a stale one: the explicit token wins for the source, the lock,
    the status write-back and the gates; without a token the controller says why it cannot work; the
    gossip key and the agents' ACL tokens, given by reference, reach the agents (their gossip is
    encrypted, as /v1/agent/self reports; the servers bootstrapped ACLs with the initial management
    token and each agent registered its node with its agent token), and no secret shows anywhere."""
    token = ACL_TOKEN
    gossip = base64.b64encode(os.urandom(32)).decode()
    with ConsulServer(tmp_path / "kvstore", acl=True) as store:
        fleet = Fleet(clean_fleet, tmp_path, cluster="secret")
        image, _ = fleet.use_real_consul()  # the plain image: ACLs come from the topology
        fleet.doc["consul"]["encrypt"] = {"env": "CR_TEST_GOSSIP"}
        fleet.doc["consul"]["acl"] = {
            "default_policy": "deny",
            "initial_management_token": {"file": str(tmp_path / "consul-token")},
            "agent_token": {"env": "CR_TEST_AGENT_TOKEN"},
        }
        fleet.env["CONSUL_HTTP_TOKEN"] = "a-stale-token-that-must-lose"
        fleet.env["CR_TEST_GOSSIP"] = gossip
        fleet.env["CR_TEST_AGENT_TOKEN"] = token  # the agents' own requests use the management token
        token_file = tmp_path / "consul-token"
        token_file.write_text(token + "\n")
        store.kv_put(KEY, yaml.safe_dump(fleet.doc, sort_keys=False).encode())
        # without the token (only the stale one): a clear error, nothing done
        refused = fleet.cli("plan", source(store), "--db", str(fleet.db), "--json")
        assert refused.code != 0, refused.stdout
        assert "ACL" in refused.stderr or "403" in refused.stderr, refused.stderr
        assert store.address in refused.stderr, refused.stderr
        ctl = controllers(
            fleet, store, "--interval", LONG_INTERVAL, "--consul-token-file", str(token_file), *LOCK
        )
        ctl.wait_ready()
        wait_for(lambda: converged(fleet, image), 30, "convergence with a token and a gossip key")
        # the registrators were created only once their agents answered agent/self with the token
        assert audit_rows(fleet.db, "SELECT count(*) FROM actions WHERE status='failed'") == [(0,)]
        reader = kv_client(store, token)
        wait_for(lambda: reader.kv.get("consul-reconciler/status/secret/host1")[1], 10, "status write-back")
        # the key reached every agent: real Consul reports its LAN gossip encrypted, all three members
        # alive (asked over HTTP with the token: py-consul leaves it off agent/self and agent/members)
        for engine in fleet.engines:
            address = f"{engine.address}:8500"
            stats = wait_for(lambda a=address: try_get(a, "/v1/agent/self", token), 30, "agent/self")["Stats"]
            assert stats["serf_lan"]["encrypted"] == "true", (engine.name, stats["serf_lan"])
        first = f"{fleet.engines[0].address}:8500"
        alive = lambda: [int(m["Status"]) for m in try_get(first, "/v1/agent/members", token) or []]  # noqa: E731
        wait_for(lambda: alive() == [1, 1, 1], 30, "three alive members over encrypted gossip")
        # default deny: nothing without a token; the servers bootstrapped ACLs with the initial
        # management token; each agent registered its node with its agent token (without it, default
        # deny blocks the node's registration: "Node info update blocked by ACLs")
        assert try_get(first, "/v1/agent/self", None) is None
        assert try_get(first, "/v1/acl/token/self", token)["Description"] == "Initial Management Token"
        nodes = lambda: sorted(n["Node"] for n in try_get(first, "/v1/catalog/nodes", token) or [])  # noqa: E731
        wait_for(lambda: nodes() == ["host1", "host2", "host3"], 30, "every node registered by its agent")
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
                "plan", source(store), "--db", str(fleet.db), "--json", f"--consul-token-file={token_file}"
            ).stdout,
            "refused plan": refused.stdout + refused.stderr,
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


def test_consul_slow_or_leaderless_keeps_enforcing_and_says_so(
    clean_fleet: list[Engine], tmp_path: Path, double: ConsulDouble, controllers: Any
) -> None:
    """The double: a real Consul cannot be made to answer slowly, or to lose its leader, on demand."""
    kv_fleet = Fleet(clean_fleet, tmp_path, cluster="kv")  # the agent stand-in, as the double is a model
    consul = double
    push(consul, kv_fleet)
    ctl = controllers(kv_fleet, consul, "--interval", LONG_INTERVAL, "--no-leader-election")
    ctl.wait_ready()
    wait_for(lambda: converged(kv_fleet, AGENT_IMAGE_1), 30, "the fleet to converge")
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
