"""Hosts reached over ``ssh://``: a real OpenSSH server on loopback in front of the test engines
(testbed/sshgateway.py), a key made by the tests, host key checking on.

The product connects as docker-py does over SSH (paramiko, ``docker system dial-stdio`` on the far
side) and reads the key and ``known_hosts`` from ``$HOME/.ssh``, here the gateway's client home. The
tests look at the engines over their own unix sockets, so what they see does not depend on SSH.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.controller_harness import ControllerProcess, audit_rows, stop_all, wait_for
from testbed.fleet import AGENT_IMAGE_1, Engine, FleetError
from testbed.sshgateway import SshGateway, another_host_key, start_ssh_gateway, stop_ssh_gateway
from tests.integration.harness import LABEL, Fleet, Run

MANAGED_BY = f"{LABEL}.managed-by"
LONG_INTERVAL = "600"  # anything repaired within seconds was repaired by an event, not the clock


@pytest.fixture(scope="module")
def gateway(fleet: list[Engine]) -> Iterator[SshGateway]:
    try:
        started = start_ssh_gateway(fleet)
    except FleetError as error:
        pytest.fail(f"the SSH server could not be brought up: {error}", pytrace=False)
    try:
        yield started
    finally:
        stop_ssh_gateway(started)


@pytest.fixture
def ssh_fleet(gateway: SshGateway, clean_fleet: list[Engine], tmp_path: Path) -> Fleet:
    """Every host of the topology reached over ssh://, trusting the server's real host key."""
    gateway.trust(clean_fleet)
    fleet = Fleet(clean_fleet, tmp_path, cluster="sshtest")
    for host, engine in zip(fleet.doc["hosts"], clean_fleet, strict=True):
        host["docker"] = gateway.url(engine)
    fleet.write()
    fleet.env["HOME"] = str(gateway.home)  # where paramiko finds .ssh/id_ed25519 and known_hosts
    fleet.env.pop("SSH_AUTH_SOCK", None)  # only the test's key is offered
    return fleet


def output(run: Run) -> str:
    return run.stdout + run.stderr


def managed(fleet: Fleet, engine: Engine) -> dict[str, dict[str, Any]]:
    return {
        name: attrs
        for name, attrs in fleet.containers(engine).items()
        if MANAGED_BY in (attrs["Config"]["Labels"] or {})
    }


def only(fleet: Fleet, count: int) -> None:
    """Keep the topology's first ``count`` hosts (host1 is the server)."""
    fleet.doc["hosts"] = fleet.doc["hosts"][:count]
    fleet.engines = fleet.engines[:count]
    fleet.write()


def changes(fleet: Fleet) -> list[dict[str, Any]]:
    return [r for r in fleet.audit() if r["kind"] in ("create", "replace", "remove", "start")]


def running(fleet: Fleet, engine: Engine, name: str) -> bool:
    attrs = fleet.containers(engine).get(name)
    return bool(attrs and attrs["State"]["Running"])


def test_apply_plan_and_audit_over_ssh(ssh_fleet: Fleet, gateway: SshGateway) -> None:
    run = ssh_fleet.apply()
    assert run.code == 0, output(run)
    results = run.json()["results"]
    assert {r["host"] for r in results} == {e.name for e in ssh_fleet.engines}, results
    assert all(r["status"] == "succeeded" for r in results), results
    for engine in ssh_fleet.engines:
        found = managed(ssh_fleet, engine)
        assert set(found) == {"consul", "registrator"}, (engine.name, sorted(found))
        assert all(attrs["State"]["Running"] for attrs in found.values()), engine.name
        assert found["consul"]["Config"]["Image"] == AGENT_IMAGE_1

    plan = ssh_fleet.plan()  # nothing left to do: every host read back over SSH
    assert plan.code == 0, output(plan)
    assert plan.json()["actions"] == []
    status = ssh_fleet.cli("status", str(ssh_fleet.file), "--db", str(ssh_fleet.db), "--json")
    assert status.code == 0, output(status)  # converged, every host observed over SSH
    assert all(h["reachable"] and h["drift"] == [] for h in status.json()["hosts"]), status.stdout
    # the audit log names each host's ssh:// endpoint as the topology gives it
    rows = ssh_fleet.audit("--kind", "create")
    assert {r["host"] for r in rows} == {e.name for e in ssh_fleet.engines}
    # every session came in with the test's key (sshd's log, LogLevel VERBOSE)
    assert "Accepted publickey for" in gateway.log_path.read_text()


def test_controller_over_ssh_repairs_drift_from_the_event_stream(ssh_fleet: Fleet, tmp_path: Path) -> None:
    only(ssh_fleet, 2)  # a server and a client: each SSH session runs a docker command on the far side
    ctl = ControllerProcess(
        ssh_fleet.file,
        ssh_fleet.db,
        tmp_path / "controller.log",
        "--interval",
        LONG_INTERVAL,
        env=ssh_fleet.env,
    )
    try:
        ctl.wait_ready()
        wait_for(
            lambda: all(
                running(ssh_fleet, e, n) for e in ssh_fleet.engines for n in ("consul", "registrator")
            ),
            30,
            "the fleet to converge over ssh",
        )
        host2 = ssh_fleet.engines[1]
        client = host2.client()
        try:
            client.containers.get("registrator").remove(force=True)
        finally:
            client.close()
        wait_for(
            lambda: running(ssh_fleet, host2, "registrator"), 15, "the removed registrator to be recreated"
        )
    finally:
        stop_all([ctl])
    kinds = {(r[0], r[1]) for r in audit_rows(ssh_fleet.db, "SELECT kind, host FROM actions")}
    assert ("create", "host2") in kinds
    triggers = ",".join(r[0] for r in audit_rows(ssh_fleet.db, "SELECT trigger FROM runs"))
    # the repair was asked for by host2's event stream, read over SSH, not by the clock
    assert "event" in triggers and "interval" not in triggers, triggers


def test_a_wrong_host_key_is_refused_and_nothing_changes(ssh_fleet: Fleet, gateway: SshGateway) -> None:
    only(ssh_fleet, 1)
    host1 = ssh_fleet.engines[0]
    # host1's line holds another server's key: what a man in the middle would present
    gateway.known_hosts.write_text(gateway.known_hosts_line(host1, another_host_key(gateway.root)))

    run = ssh_fleet.plan()
    text = output(run)
    assert run.code == 1, text
    assert "host1" in text and "does not match" in text and str(gateway.known_hosts) in text, text
    assert f"[{gateway.address}]:{gateway.ports[host1.name]}" in text, text

    run = ssh_fleet.apply()
    text = output(run)
    assert run.code == 1, text
    assert "does not match" in text, text
    assert managed(ssh_fleet, host1) == {}  # its two missing containers were not created
    assert changes(ssh_fleet) == []


def test_an_unknown_host_is_refused(ssh_fleet: Fleet, gateway: SshGateway) -> None:
    gateway.known_hosts.write_text("")
    run = ssh_fleet.apply()
    text = output(run)
    assert run.code == 1, text
    assert "is not in" in text and "host key checking is on" in text, text
    assert all(managed(ssh_fleet, e) == {} for e in ssh_fleet.engines)


def test_a_refused_login_is_named(ssh_fleet: Fleet, gateway: SshGateway, tmp_path: Path) -> None:
    home = tmp_path / "other-home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(gateway.known_hosts.read_text())
    ssh_fleet.env["HOME"] = str(home)  # trusts the server, but holds no key the server knows
    another_host_key(home / ".ssh")  # a key pair the server does not know, as id_ed25519
    (home / ".ssh" / "other_host_key").rename(home / ".ssh" / "id_ed25519")
    run = ssh_fleet.plan()
    text = output(run)
    assert run.code == 1, text
    assert "SSH login refused" in text, text
