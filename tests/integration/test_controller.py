"""The long-running controller (`consul-reconciler run`) on real engines.

The resync interval is set to minutes, so anything repaired within seconds was repaired
by a trigger (a Docker event, the file watcher, an engine coming back), not by the clock.
"""

from __future__ import annotations

import random
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed.controller_harness import (
    ControllerProcess,
    audit_rows,
    free_port,
    stop_all,
    wait_for,
)
from testbed.fleet import AGENT_IMAGE_1, AGENT_IMAGE_2, Engine
from tests.integration.harness import LABEL, Fleet

LONG_INTERVAL = "600"


@pytest.fixture
def fleet3(clean_fleet: list[Engine], tmp_path: Path) -> Fleet:
    return Fleet(clean_fleet, tmp_path, cluster="ctl")


@pytest.fixture
def controllers(tmp_path: Path) -> Any:
    started: list[ControllerProcess] = []

    def start(fleet: Fleet, *args: str) -> ControllerProcess:
        proc = ControllerProcess(
            fleet.file, fleet.db, tmp_path / f"controller-{len(started)}.log", *args, env=fleet.env
        )
        started.append(proc)
        return proc

    yield start
    stop_all(started)


def running(fleet: Fleet, engine: Engine, name: str, image: str | None = None) -> dict[str, Any] | None:
    attrs = fleet.containers(engine).get(name)
    if attrs is None or not attrs["State"]["Running"]:
        return None
    if image is not None and attrs["Config"]["Image"] != image:
        return None
    return attrs


def all_running(fleet: Fleet, image: str = AGENT_IMAGE_1) -> bool:
    return all(running(fleet, e, "consul", image) and running(fleet, e, "registrator") for e in fleet.engines)


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


def test_drift_repaired_at_once_and_file_edits_followed(fleet3: Fleet, controllers: Any) -> None:
    ctl = controllers(fleet3, "--interval", LONG_INTERVAL)
    ctl.wait_ready()
    wait_for(lambda: all_running(fleet3), 20, "the fleet to converge")
    host2, host3 = fleet3.engines[1], fleet3.engines[2]

    client = host2.client()
    try:
        client.containers.get("registrator").remove(force=True)
    finally:
        client.close()
    wait_for(lambda: running(fleet3, host2, "registrator"), 10, "the removed registrator to be recreated")
    # the passes of host2's events looked at host2 and the server's host1, not at host3 (reconciler.scope)
    wait_for(
        lambda: metric_value(ctl.get("/metrics")[1], "consul_reconciler_last_pass_hosts") == 2,
        5,
        "an event's pass to look at its host and the server's",
    )

    client = host3.client()
    try:
        killed_id = client.containers.get("consul").id
        client.containers.get("consul").kill()
    finally:
        client.close()
    back = wait_for(lambda: running(fleet3, host3, "consul"), 10, "the killed agent to run again")
    assert back["Id"] == killed_id  # started again, not replaced

    fleet3.doc["consul"]["client_image"] = AGENT_IMAGE_2
    fleet3.write()
    for engine in fleet3.engines[1:]:
        wait_for(lambda e=engine: running(fleet3, e, "consul", AGENT_IMAGE_2), 15, "the file edit to apply")
    assert running(fleet3, fleet3.engines[0], "consul", AGENT_IMAGE_1)  # the server keeps its image
    kinds = {(r[0], r[1], r[2]) for r in audit_rows(fleet3.db, "SELECT kind, host, container FROM actions")}
    assert {
        ("create", "host2", "registrator"),
        ("start", "host3", "consul"),
        ("replace", "host2", "consul"),
        ("replace", "host3", "consul"),
    } <= kinds
    triggers = {r[0] for r in audit_rows(fleet3.db, "SELECT trigger FROM runs")}
    # every pass was asked for by an event, the file watcher or start-up; none waited for the clock
    assert any("event" in t for t in triggers)
    assert "interval" not in ",".join(triggers)


def test_invalid_file_keeps_the_last_valid_state_enforced(fleet3: Fleet, controllers: Any) -> None:
    ctl = controllers(fleet3, "--interval", LONG_INTERVAL)
    ctl.wait_ready()
    wait_for(lambda: all_running(fleet3), 20, "the fleet to converge")
    before = fleet3.ids()
    fleet3.file.write_text("cluster: ctl\nhosts: [ {name: 'bad name'} ]\n")
    wait_for(
        lambda: audit_rows(fleet3.db, "SELECT error FROM runs WHERE status = 'refused'"),
        10,
        "the rejection to be audited",
    )
    [(error,)] = audit_rows(fleet3.db, "SELECT error FROM runs WHERE status = 'refused'")
    assert "hosts[0].name" in error and "keeping the last valid state" in error
    client = fleet3.engines[1].client()
    try:
        client.containers.get("registrator").remove(force=True)  # drift while the file is bad
    finally:
        client.close()
    wait_for(
        lambda: running(fleet3, fleet3.engines[1], "registrator"), 10, "repair from the last valid state"
    )
    after = fleet3.ids()
    assert {k: v for k, v in after.items() if k != ("host2", "registrator")} == {
        k: v for k, v in before.items() if k != ("host2", "registrator")
    }
    assert metric_value(ctl.get("/metrics")[1], "consul_reconciler_desired_state_valid") == 0


def test_a_dangerous_document_keeps_the_last_applied_one_enforced(fleet3: Fleet, controllers: Any) -> None:
    """A new datacenter, not acknowledged: every pass of the new document is refused (audited), and the
    document applied before stays enforced: a registrator removed meanwhile is made again, as it was."""
    ctl = controllers(fleet3, "--interval", LONG_INTERVAL)
    ctl.wait_ready()
    wait_for(lambda: all_running(fleet3), 20, "the fleet to converge")
    before = fleet3.ids()
    fleet3.doc["datacenter"] = "dc2"
    fleet3.write()
    refused = wait_for(
        lambda: audit_rows(fleet3.db, "SELECT error FROM runs WHERE status = 'refused'"),
        10,
        "the dangerous document to be refused",
    )
    assert "datacenter" in refused[0][0] and "acknowledge: [datacenter]" in refused[0][0]
    client = fleet3.engines[1].client()
    try:
        client.containers.get("registrator").remove(force=True)  # drift while the document is refused
    finally:
        client.close()
    wait_for(
        lambda: running(fleet3, fleet3.engines[1], "registrator"), 10, "repair from the last applied one"
    )
    after = fleet3.ids()
    assert {k: v for k, v in after.items() if k != ("host2", "registrator")} == {
        k: v for k, v in before.items() if k != ("host2", "registrator")
    }  # no agent moved to dc2
    triggers = [t for (t,) in audit_rows(fleet3.db, "SELECT trigger FROM runs WHERE status = 'succeeded'")]
    assert any("the last applied document" in t for t in triggers), triggers
    assert "enforcing the last applied document" in ctl.log()


def test_engine_down_backs_off_then_converges_when_back(fleet3: Fleet, controllers: Any) -> None:
    ctl = controllers(fleet3, "--interval", LONG_INTERVAL, "--backoff-base", "0.2", "--backoff-max", "1")
    ctl.wait_ready()
    wait_for(lambda: all_running(fleet3), 20, "the fleet to converge")
    down = fleet3.engines[2]
    down.stop()
    fleet3.doc["consul"]["client_image"] = AGENT_IMAGE_2
    fleet3.write()
    wait_for(
        lambda: running(fleet3, fleet3.engines[1], "consul", AGENT_IMAGE_2),
        15,
        "the reachable client to follow the edit",
    )
    backoff = wait_for(
        lambda: audit_rows(
            fleet3.db, "SELECT error, reason FROM actions WHERE host='host3' AND kind='backoff'"
        ),
        10,
        "the backoff of host3 to be audited",
    )
    assert "next try in" in backoff[0][1]
    status = fleet3.cli("status", str(fleet3.file), "--db", str(fleet3.db), "--json")
    assert status.code == 1  # a host's state is unknown: neither converged (0) nor drift (2)
    report = status.json()
    host3 = next(h for h in report["hosts"] if h["host"] == "host3")
    assert host3["reachable"] is False and host3["drift"] is None  # unknown, never "none"
    assert host3["controller_state"]["state"] == "unreachable" and host3["controller_state"]["current"]
    assert report["controller"]["running"] and report["converged"] is False
    assert "controller: running" in fleet3.cli("status", str(fleet3.file), "--db", str(fleet3.db)).stdout
    # The gauges say host3 is unreachable at every scrape, whether the last pass tried it or left it
    # alone inside its backoff window; its drift is absent (unknown), not 0.
    for _ in range(5):
        metrics = ctl.get("/metrics")[1]
        assert metric_value(metrics, "consul_reconciler_hosts_unreachable") == 1
        assert (
            metric_value(metrics, "consul_reconciler_host_state", {"host": "host3", "state": "unreachable"})
            == 1
        )
        assert metric_value(metrics, "consul_reconciler_host_state", {"host": "host3", "state": "ok"}) == 0
        assert metric_value(metrics, "consul_reconciler_host_state", {"host": "host2", "state": "ok"}) == 1
        assert 'consul_reconciler_drift{host="host3"}' not in metrics
        time.sleep(0.4)
    assert 'consul_reconciler_build_info{python="' in metrics
    assert metric_value(metrics, "process_resident_memory_bytes") > 0
    # Retried about every second (--backoff-max 1) while down, and audited once: when it began.
    tries = metric_value(metrics, "consul_reconciler_passes_total")
    unseen = "SELECT count(*) FROM actions WHERE host='host3' AND kind='observe' AND status='failed'"
    assert audit_rows(fleet3.db, unseen) == [(1,)]
    assert tries >= 4, tries
    down.start()
    wait_for(
        lambda: running(fleet3, down, "consul", AGENT_IMAGE_2),
        30,
        "host3 to converge once its engine is back",
    )
    assert ctl.alive()
    states = audit_rows(fleet3.db, "SELECT state FROM host_states WHERE host='host3'")
    wait_for(
        lambda: audit_rows(fleet3.db, "SELECT state FROM host_states WHERE host='host3'") == [("ok",)],
        10,
        f"host3's state to be ok again (was {states})",
    )
    answered = "SELECT count(*) FROM actions WHERE host='host3' AND kind='observe' AND status='succeeded'"
    assert audit_rows(fleet3.db, answered) == [(1,)]  # and once when it ended
    assert audit_rows(fleet3.db, unseen) == [(1,)]
    metrics = ctl.get("/metrics")[1]
    assert metric_value(metrics, "consul_reconciler_host_state", {"host": "host3", "state": "ok"}) == 1
    assert metric_value(metrics, "consul_reconciler_hosts_unreachable") == 0
    ctl.signal(signal.SIGTERM)  # a clean stop is recorded; a killed one is found by its silent heartbeat
    ctl.wait(30)
    after = fleet3.cli("status", str(fleet3.file), "--db", str(fleet3.db))
    assert "controller: NOT RUNNING; the last one," in after.stdout and "stopped at" in after.stdout


def test_sigkill_mid_replacement_then_restart_converges(fleet3: Fleet, controllers: Any) -> None:
    # A server's replacement is long enough to kill the controller in the middle of it: the graceful
    # leave alone takes Consul's leave drain (5 s).
    fleet3.doc["hosts"] = fleet3.doc["hosts"][:1]
    fleet3.write()
    assert fleet3.apply().code == 0
    fleet3.wait_consul_healthy()
    host1 = fleet3.engines[0]
    old_id = fleet3.containers(host1)["consul"]["Id"]

    ctl = controllers(fleet3, "--interval", LONG_INTERVAL, "--stop-timeout", "20")
    ctl.wait_ready()
    fleet3.doc["consul"]["image"] = AGENT_IMAGE_2
    fleet3.write()
    # the replacement is in flight: its row is "started" and the temporary container exists
    wait_for(
        lambda: audit_rows(fleet3.db, "SELECT id FROM actions WHERE kind='replace' AND status='started'"),
        15,
        "the replacement to start",
    )
    wait_for(lambda: any("-next-" in n for n in fleet3.containers(host1)), 10, "the new container")
    ctl.signal(signal.SIGKILL)
    ctl.wait(10)

    restarted = controllers(fleet3, "--interval", LONG_INTERVAL, "--stop-timeout", "1")
    restarted.wait_ready(60)
    wait_for(
        lambda: (
            running(fleet3, host1, "consul", AGENT_IMAGE_2)
            and set(fleet3.containers(host1)) == {"consul", "registrator"}
        ),
        60,
        "convergence after the restart",
    )
    names = sorted(fleet3.containers(host1))
    assert names == ["consul", "registrator"]  # no duplicate, no leftover temporary
    assert fleet3.containers(host1)["consul"]["Id"] != old_id
    interrupted = audit_rows(
        fleet3.db, "SELECT kind, container, error FROM actions WHERE status='interrupted'"
    )
    assert [(k, c) for k, c, _ in interrupted] == [("replace", "consul")]
    assert "found unfinished" in interrupted[0][2]
    # the other servers' replacements may still be running: every row ends finished, none left started
    started = "SELECT count(*) FROM actions WHERE status='started'"
    wait_for(lambda: audit_rows(fleet3.db, started) == [(0,)], 120, "every action of the rollout to finish")


def test_sigterm_mid_pass_finishes_the_action_and_exits_zero(fleet3: Fleet, controllers: Any) -> None:
    assert fleet3.apply().code == 0
    fleet3.wait_consul_healthy()  # so that the server's replacement goes first, not a waiting gate
    ctl = controllers(fleet3, "--interval", LONG_INTERVAL, "--stop-timeout", "3")
    ctl.wait_ready()
    fleet3.doc["consul"]["image"] = AGENT_IMAGE_2
    fleet3.write()
    wait_for(
        lambda: audit_rows(fleet3.db, "SELECT id FROM actions WHERE kind='replace' AND status='started'"),
        15,
        "the first replacement to start",
    )
    ctl.signal(signal.SIGTERM)
    assert ctl.wait(30) == 0
    runs = audit_rows(fleet3.db, "SELECT status FROM runs ORDER BY id DESC LIMIT 1")
    assert runs == [("interrupted",)]
    rows = audit_rows(fleet3.db, "SELECT host, status, error FROM actions WHERE kind='replace' ORDER BY id")
    assert rows[0][:2] == ("host1", "succeeded")  # the server's replacement in flight was finished
    assert all(status == "skipped" and "stopped acting" in (error or "") for _, status, error in rows[1:])
    assert len(rows) == 3
    assert running(fleet3, fleet3.engines[0], "consul", AGENT_IMAGE_2)
    assert audit_rows(fleet3.db, "SELECT count(*) FROM actions WHERE status='started'") == [(0,)]


def test_metrics_move_with_passes_and_actions(fleet3: Fleet, controllers: Any) -> None:
    """(/healthz under a wedged step and through a long gate wait: tests/integration/test_crash_windows.py)"""
    fleet3.doc["hosts"] = fleet3.doc["hosts"][:1]
    fleet3.write()
    ctl = controllers(fleet3, "--interval", "1", "--stop-timeout", "30")
    ctl.wait_ready()
    assert ctl.get("/healthz")[0] == 200
    metrics = ctl.get("/metrics")[1]
    created = metric_value(
        metrics, "consul_reconciler_actions_total", {"kind": "create", "status": "succeeded"}
    )
    assert created == 2
    assert metric_value(metrics, "consul_reconciler_passes_total", {"outcome": "succeeded"}) >= 1
    assert metric_value(metrics, "consul_reconciler_last_success_timestamp_seconds") > 0
    assert metric_value(metrics, "consul_reconciler_pass_duration_seconds_count") >= 1
    fleet3.wait_consul_healthy()

    fleet3.doc["consul"]["image"] = AGENT_IMAGE_2  # the server's replacement: a 5 s leave, then its gates
    fleet3.write()
    replaced = {"kind": "replace", "status": "succeeded"}
    wait_for(
        lambda: metric_value(ctl.get("/metrics")[1], "consul_reconciler_actions_total", replaced) == 1,
        60,
        "the replacement counted",
    )
    assert ctl.get("/healthz")[0] == 200  # a pass that waits on Consul's gates is not a wedge
    # drift is what the last pass planned; the pass after the replacement finds none
    wait_for(
        lambda: metric_value(ctl.get("/metrics")[1], "consul_reconciler_drift", {"host": "host1"}) == 0,
        5,
        "drift to read 0",
    )


def test_crash_loop_marks_the_host_degraded_instead_of_a_tight_loop(fleet3: Fleet, controllers: Any) -> None:
    ctl = controllers(fleet3, "--interval", LONG_INTERVAL, "--crashloop-attempts", "3", "--backoff-base", "5")
    ctl.wait_ready()
    wait_for(lambda: all_running(fleet3), 20, "the fleet to converge")
    host2 = fleet3.engines[1]
    # attempts count (re)creations: created at convergence, then removed and recreated twice
    for _ in range(2):
        agent = wait_for(lambda: running(fleet3, host2, "registrator"), 10, "the registrator to be back")
        client = host2.client()
        try:
            client.containers.get(agent["Id"]).remove(force=True)
        finally:
            client.close()
    degraded = wait_for(
        lambda: audit_rows(fleet3.db, "SELECT reason FROM actions WHERE kind='degraded' AND host='host2'"),
        10,
        "host2 to be marked degraded",
    )
    assert "crash loop" in degraded[0][0]
    wait_for(
        lambda: audit_rows(fleet3.db, "SELECT state FROM host_states WHERE host='host2'") == [("degraded",)],
        10,
        "host2's state to read degraded",
    )
    # within the backoff the container is not recreated again (no tight loop)...
    creates = audit_rows(
        fleet3.db,
        "SELECT count(*) FROM actions WHERE host='host2' AND kind='create' AND container='registrator'",
    )
    assert creates == [(3,)]
    client = host2.client()
    try:
        client.containers.get("registrator").remove(force=True)
    finally:
        client.close()
    time.sleep(1.5)  # passes run on the removal's events, but the host is deferred
    status, body = ctl.get("/status")
    assert status == 200 and '"degraded": true' in body
    assert (
        audit_rows(
            fleet3.db,
            "SELECT count(*) FROM actions WHERE host='host2' AND kind='create' AND container='registrator'",
        )
        == creates
    )
    assert metric_value(ctl.get("/metrics")[1], "consul_reconciler_hosts_degraded") == 1
    # ...and it is, once the backoff has passed
    wait_for(lambda: running(fleet3, host2, "registrator"), 20, "the retry after the backoff")
    assert fleet3.containers(fleet3.engines[0])["consul"]["Config"]["Labels"][f"{LABEL}.managed-by"] == "ctl"


def test_http_endpoint_off_loopback_requires_a_bearer_token(fleet3: Fleet, tmp_path: Path) -> None:
    fleet3.doc["hosts"] = fleet3.doc["hosts"][:1]
    fleet3.write()
    # bound to every address (not loopback) without a token: refuses to start, and says why
    refused = fleet3.cli("run", str(fleet3.file), "--db", str(fleet3.db), "--http", "0.0.0.0:0")
    assert refused.code == 1
    assert "needs a bearer token" in refused.stderr
    token = "t0ken-" + "x" * 24
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    port = free_port()
    # the last --http wins: the harness's loopback default is overridden by 0.0.0.0
    ctl = ControllerProcess(
        fleet3.file,
        fleet3.db,
        tmp_path / "open.log",
        "--interval",
        LONG_INTERVAL,
        "--http-token-file",
        str(token_file),
        "--http",
        f"0.0.0.0:{port}",
        env=fleet3.env,
    )
    ctl.port = port  # requests go to 127.0.0.1 (loopback only), which 0.0.0.0 serves
    try:
        wait_for(lambda: ctl.get("/healthz")[0] == 200, 20, "/healthz without a token")
        assert ctl.get("/metrics")[0] == 401
        assert ctl.get("/status")[0] == 401
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200 and b"consul_reconciler_passes_total" in response.read()
        wrong = urllib.request.Request(
            f"http://127.0.0.1:{port}/readyz", headers={"Authorization": "Bearer nope"}
        )
        try:
            urllib.request.urlopen(wrong, timeout=5)
            raise AssertionError("a wrong token was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        assert token not in ctl.log()
    finally:
        ctl.stop()


def test_engines_stopped_and_started_in_random_order_during_passes(fleet3: Fleet, controllers: Any) -> None:
    rng = random.Random(20261127)
    ctl = controllers(fleet3, "--interval", LONG_INTERVAL, "--backoff-base", "0.2", "--backoff-max", "1")
    ctl.wait_ready()
    wait_for(lambda: all_running(fleet3), 20, "the fleet to converge")
    image = AGENT_IMAGE_1
    for _round in range(3):
        image = AGENT_IMAGE_2 if image == AGENT_IMAGE_1 else AGENT_IMAGE_1
        fleet3.doc["consul"]["image"] = image
        fleet3.write()  # passes start replacing now...
        down = rng.sample(fleet3.engines, rng.randint(1, 3))
        for engine in down:  # ...while engines go away in random order
            time.sleep(rng.uniform(0.0, 0.3))
            engine.stop()
        time.sleep(rng.uniform(0.5, 1.5))
        for engine in rng.sample(down, len(down)):  # and come back in another
            engine.start()
            time.sleep(rng.uniform(0.0, 0.3))
        wait_for(lambda img=image: all_running(fleet3, img), 60, f"convergence on {image}")
        for engine in fleet3.engines:
            assert set(fleet3.containers(engine)) == {"consul", "registrator"}  # no duplicate or leftover
    assert ctl.alive()
    time.sleep(0.5)
    statuses = {s for (s,) in audit_rows(fleet3.db, "SELECT DISTINCT status FROM actions")}
    # "waiting": a server's change waits while its cluster cannot be seen (its engine down)
    assert statuses <= {"succeeded", "failed", "skipped", "waiting"}, statuses


def test_no_pull_reports_the_missing_image_per_host_and_keeps_what_runs(
    fleet3: Fleet, controllers: Any
) -> None:
    ctl = controllers(fleet3, "--interval", LONG_INTERVAL, "--no-pull")
    ctl.wait_ready()
    wait_for(lambda: all_running(fleet3), 20, "the fleet to converge")
    before = fleet3.ids()
    # With pulling on, this name would be tried against a registry (and fail with "cannot pull").
    missing = "consul-reconciler-standin/no-such-image:9"
    fleet3.doc["registrator"]["image"] = missing
    fleet3.write()
    query = "SELECT host, error FROM actions WHERE status = 'failed' ORDER BY host"
    wait_for(lambda: len(audit_rows(fleet3.db, query)) >= 3, 20, "the three failures to be audited")
    rows = audit_rows(fleet3.db, query)
    assert {host for host, _ in rows} == {"host1", "host2", "host3"}
    for host, error in rows:
        assert error.startswith(f"host {host}: image {missing} is not present and pulling is off"), error
    assert fleet3.ids() == before
    assert all_running(fleet3)


MALFORMED = {
    "tagged scalar": "cluster: ctl\nhosts:\n  - {name: host1, timeout: !!int abc}\n",
    "impossible timestamp": "cluster: ctl\nwhen: !!timestamp 2024-13-45\nhosts: []\n",
    "huge integer": "cluster: ctl\nhosts:\n  - {name: host1, timeout: " + "9" * 5000 + "}\n",
    "NUL character": "cluster: ctl\x00\nhosts: []\n",
    "merge key": "cluster: ctl\nhosts:\n  - <<: {name: host9}\n    name: host1\n",
    "not UTF-8": "cluster: ctl\nhosts: [\xff\xfe]\n",
    "a string for a boolean": "cluster: ctl\nrollout: {gates: 'off'}\nhosts: []\n",
}


def test_every_class_of_malformed_document_is_refused_and_the_last_valid_state_kept(
    fleet3: Fleet, controllers: Any
) -> None:
    # the registrator is removed by hand once per document: seven repairs in a minute are no crash loop
    ctl = controllers(fleet3, "--interval", LONG_INTERVAL, "--crashloop-attempts", "100")
    ctl.wait_ready()
    wait_for(lambda: all_running(fleet3), 30, "the fleet to converge")
    before = fleet3.ids()
    host2 = fleet3.engines[1]
    for number, (what, text) in enumerate(MALFORMED.items(), start=1):
        # written whole: a half-written file would be one more refusal (of an empty document)
        fleet3.write_bytes(text.encode("latin-1") if what == "not UTF-8" else text.encode())
        wait_for(
            lambda n=number: len(audit_rows(fleet3.db, "SELECT id FROM runs WHERE status='refused'")) >= n,
            15,
            f"the {what} document refused",
        )
        client = host2.client()
        try:
            client.containers.get("registrator").remove(force=True)  # drift while it is refused
        finally:
            client.close()
        wait_for(lambda: running(fleet3, host2, "registrator"), 20, f"repair under the {what} document")
        assert ctl.alive(), f"the controller stopped on the {what} document:\n{ctl.log()}"
    refused = "SELECT error FROM runs WHERE status='refused' ORDER BY id"
    errors = [e for (e,) in audit_rows(fleet3.db, refused)]
    assert len(errors) == len(MALFORMED) and all("keeping the last valid state" in e for e in errors), errors
    assert "Traceback" not in ctl.log()
    after = fleet3.ids()
    assert {k: v for k, v in after.items() if k != ("host2", "registrator")} == {
        k: v for k, v in before.items() if k != ("host2", "registrator")
    }  # nothing but the repairs was done
    # a later valid document is applied
    fleet3.doc["consul"]["client_image"] = AGENT_IMAGE_2
    fleet3.write()
    for engine in fleet3.engines[1:]:
        wait_for(lambda e=engine: running(fleet3, e, "consul", AGENT_IMAGE_2), 30, "the valid document")
