"""A host behind a real mutual-TLS Docker endpoint (tcp://127.0.0.1:PORT, see testbed/tlsengine.py).

The product connects over TCP with the topology's ``tls`` files; the tests look at the engine over
its own unix socket, so what they see does not depend on the product's TLS set-up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from desired_state.spec import Endpoint
from reconciler.eventhub import EventHub, HubStream
from testbed.controller_harness import wait_for
from testbed.fleet import AGENT_IMAGE_1, STANDIN_REGISTRATOR_1, Engine, FleetError
from testbed.tlsengine import TLSEngine, start_tls_engine, stop_tls_engine
from tests.integration.harness import LABEL, Fleet, Run

MANAGED_BY = f"{LABEL}.managed-by"
HOST = "tlshost"
# requests lets these variables replace the CA a client was given (session.verify), so with them set
# the product would check the engine against the system bundle instead of tls.ca; see
# test_ca_bundle_environment_does_not_replace_tls_ca.
CA_BUNDLE_VARS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture(scope="module")
def tls_engine(fleet: list[Engine]) -> Iterator[TLSEngine]:
    try:
        engine = start_tls_engine(fleet[0])
    except FleetError as error:
        pytest.fail(f"the TLS Docker engine could not be brought up: {error}", pytrace=False)
    try:
        yield engine
    finally:
        stop_tls_engine(engine)


def tls_fleet(engine: TLSEngine, tmp: Path, *, ca: Path, cert: Path, key: Path) -> Fleet:
    tmp.mkdir(parents=True, exist_ok=True)
    fleet = Fleet([engine], tmp, cluster="tlstest")
    host: dict[str, Any] = fleet.doc["hosts"][0]
    host.update(
        {
            "name": HOST,
            "docker": engine.tcp_url,
            "tls": {"ca": str(ca), "cert": str(cert), "key": str(key)},
            "role": "server",
            "advertise": engine.address,
            # the same desired state in every test, so a good apply never has to replace anything
            "data_dir": str(engine.state_dir / "consul-data"),
        }
    )
    fleet.write()
    for name in CA_BUNDLE_VARS:
        fleet.env.pop(name, None)
    return fleet


def good_fleet(engine: TLSEngine, tmp: Path) -> Fleet:
    assert engine.certs is not None
    c = engine.certs
    return tls_fleet(engine, tmp, ca=c.ca, cert=c.client_cert, key=c.client_key)


def managed(fleet: Fleet, engine: TLSEngine) -> dict[str, dict[str, Any]]:
    return {
        name: attrs
        for name, attrs in fleet.containers(engine).items()
        if MANAGED_BY in (attrs["Config"]["Labels"] or {})
    }


def output(run: Run) -> str:
    return run.stdout + run.stderr


@pytest.fixture
def converged(tls_engine: TLSEngine, tmp_path: Path) -> Fleet:
    """The TLS host converged with the right certificates (idempotent across tests)."""
    fleet = good_fleet(tls_engine, tmp_path / "good")
    run = fleet.apply()
    assert run.code == 0, output(run)
    return fleet


def assert_no_actions(fleet: Fleet) -> None:
    rows = fleet.audit() if fleet.db.exists() else []
    assert [r for r in rows if r["kind"] in ("create", "replace", "start", "remove")] == []


def test_apply_over_tls_converges(tls_engine: TLSEngine, tmp_path: Path) -> None:
    fleet = good_fleet(tls_engine, tmp_path)
    run = fleet.apply()
    assert run.code == 0, output(run)
    result = run.json()
    assert result["run_id"] is None or result["status"] == "succeeded", result
    assert all(r["status"] == "succeeded" for r in result["results"]), result["results"]

    found = managed(fleet, tls_engine)
    images = {attrs["Config"]["Image"] for attrs in found.values()}
    assert images == {AGENT_IMAGE_1, STANDIN_REGISTRATOR_1}
    assert all(attrs["State"]["Running"] for attrs in found.values()), found.keys()
    names = " ".join(found)
    assert "consul" in names and "registrator" in names, names

    again = fleet.apply()
    assert again.code == 0, output(again)
    assert again.json()["results"] == []


def test_wrong_ca_fails_handshake_and_changes_nothing(
    tls_engine: TLSEngine, converged: Fleet, tmp_path: Path
) -> None:
    assert tls_engine.certs is not None
    c = tls_engine.certs
    before = converged.ids()
    assert before

    fleet = tls_fleet(tls_engine, tmp_path / "wrong-ca", ca=c.other_ca, cert=c.client_cert, key=c.client_key)
    run = fleet.apply()
    assert run.code == 1, output(run)
    assert HOST in output(run)
    assert "TLS handshake failed" in output(run), output(run)
    assert converged.ids() == before
    assert_no_actions(fleet)


def test_client_certificate_of_another_ca_is_rejected(
    tls_engine: TLSEngine, converged: Fleet, tmp_path: Path
) -> None:
    assert tls_engine.certs is not None
    c = tls_engine.certs
    before = converged.ids()

    fleet = tls_fleet(
        tls_engine, tmp_path / "wrong-client", ca=c.ca, cert=c.other_client_cert, key=c.other_client_key
    )
    run = fleet.apply()
    assert run.code == 1, output(run)
    assert HOST in output(run)
    assert "TLS handshake failed" in output(run), output(run)
    assert converged.ids() == before
    assert_no_actions(fleet)


def test_missing_certificate_file_is_named(tls_engine: TLSEngine, converged: Fleet, tmp_path: Path) -> None:
    assert tls_engine.certs is not None
    c = tls_engine.certs
    before = converged.ids()
    missing = tmp_path / "no-such-cert.pem"

    fleet = tls_fleet(tls_engine, tmp_path / "missing", ca=c.ca, cert=missing, key=c.client_key)
    run = fleet.apply()
    assert run.code == 1, output(run)
    assert HOST in output(run)
    assert str(missing) in output(run), output(run)
    assert converged.ids() == before
    assert_no_actions(fleet)


def test_ca_bundle_environment_does_not_replace_tls_ca(
    tls_engine: TLSEngine, converged: Fleet, tmp_path: Path
) -> None:
    fleet = good_fleet(tls_engine, tmp_path / "env")
    # requests would let this replace the host's tls.ca; the product turns that off (engines.connect)
    fleet.env["REQUESTS_CA_BUNDLE"] = "/etc/ssl/certs/ca-certificates.crt"
    fleet.env["CURL_CA_BUNDLE"] = "/etc/ssl/certs/ca-certificates.crt"
    run = fleet.apply()
    assert run.code == 0, output(run)


def _hub_stream(
    engine: TLSEngine, ca: Path, cert: Path, key: Path, seen: list[str]
) -> tuple[EventHub, HubStream]:
    endpoint = Endpoint(
        url=engine.tcp_url, tls_ca=str(ca), tls_cert=str(cert), tls_key=str(key), timeout=5.0
    )
    hub = EventHub()
    stream = HubStream(
        HOST, endpoint, "tlstest", lambda host, action, event: seen.append(action), window=5.0
    )
    return hub, hub.watch(stream)


def test_the_event_hub_follows_a_tls_engine_and_refuses_a_foreign_ca(
    tls_engine: TLSEngine, converged: Fleet, tmp_path: Path
) -> None:
    """The controller's event streams (reconciler.eventhub) speak TLS themselves: the host's CA,
    client certificate and key, as the passes' docker-py clients do."""
    c = tls_engine.certs
    assert c is not None
    seen: list[str] = []
    hub, stream = _hub_stream(tls_engine, c.ca, c.client_cert, c.client_key, seen)
    refused_seen: list[str] = []  # checked against a CA that did not sign the engine's certificate
    refused_hub, refused = _hub_stream(tls_engine, c.other_ca, c.client_cert, c.client_key, refused_seen)
    try:
        wait_for(stream.connected.is_set, 20, "the event stream over TLS")
        with contextlib.closing(docker.DockerClient(base_url=f"unix://{tls_engine.socket_path}")) as client:
            next(x for x in client.containers.list() if x.name.startswith("registrator")).kill()
        wait_for(lambda: "kill" in seen, 20, "the kill, read over TLS")
        assert not refused.connected.is_set() and refused.delay > 0.5  # failed, backing off
        assert refused_seen == []
    finally:
        hub.stop()
        refused_hub.stop()
