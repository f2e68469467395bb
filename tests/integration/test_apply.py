"""One pass against real Docker engines, driven through the real CLI.

Every scenario asserts on the engines' own state (docker inspect), on the CLI's
exit code and on the audit rows, never on the product's word alone.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import docker.errors
import pytest

from testbed.fleet import AGENT_IMAGE_1, AGENT_IMAGE_2, STANDIN_CONSUL_1, Engine
from tests.integration.harness import LABEL, Fleet, Run


@pytest.fixture
def fleet3(clean_fleet: list[Engine], tmp_path: Path) -> Fleet:
    return Fleet(clean_fleet, tmp_path)


def converged(f: Fleet) -> Run:
    run = f.apply()
    assert run.code == 0, f"apply failed:\n{run.stdout}\n{run.stderr}"
    return run


def test_empty_to_converged_with_labels_command_mounts_network(fleet3: Fleet) -> None:
    run = converged(fleet3)
    result = run.json()
    assert result["status"] == "succeeded"
    assert [(r["kind"], r["host"], r["container"]) for r in result["results"]] == [
        ("create", "host1", "consul"),
        ("create", "host2", "consul"),
        ("create", "host3", "consul"),
        ("create", "host1", "registrator"),
        ("create", "host2", "registrator"),
        ("create", "host3", "registrator"),
    ]
    server = fleet3.engines[0]
    for index, engine in enumerate(fleet3.engines):
        found = fleet3.containers(engine)
        assert set(found) == {"consul", "registrator"}
        agent, registrator = found["consul"], found["registrator"]
        for attrs in (agent, registrator):
            assert attrs["State"]["Running"] is True
            assert attrs["HostConfig"]["NetworkMode"] == "host"
            assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
            labels = attrs["Config"]["Labels"]
            assert labels[f"{LABEL}.managed-by"] == "itest"
            assert labels[f"{LABEL}.host"] == engine.name
            assert len(labels[f"{LABEL}.spec-hash"]) == 16
        assert agent["Config"]["Labels"][f"{LABEL}.role"] == ("server" if index == 0 else "client")
        args = agent["Config"]["Cmd"]  # the command the product set (the image adds its entrypoint)
        if index == 0:
            assert args[:3] == ["agent", "-server", "-bootstrap-expect=1"]
        else:
            assert "-server" not in args
            assert f"-retry-join={server.address}" in args
        assert args[args.index("-advertise") + 1] == engine.address
        assert args[args.index("-client") + 1] == engine.address
        assert f"-node={engine.name}" in args and "-ui" in args
        assert agent["Config"]["Image"] == AGENT_IMAGE_1
        binds = {m["Destination"]: m["Source"] for m in agent["Mounts"]}
        assert binds["/consul/data"] == str(fleet3.tmp / f"data-{engine.name}")
        assert registrator["Args"] == [
            "-internal",
            "-ip",
            engine.address,
            f"consul://{engine.address}:8500",
        ]
        reg_binds = {m["Destination"]: m["Source"] for m in registrator["Mounts"]}
        assert reg_binds["/tmp/docker.sock"] == str(engine.socket_path)

    rows = fleet3.audit("--run", str(result["run_id"]))
    assert sorted((r["kind"], r["host"], r["container"], r["status"]) for r in rows) == sorted(
        (r["kind"], r["host"], r["container"], "succeeded") for r in result["results"]
    )
    ids = {(r["host"], r["container"]): r["container_id"] for r in rows}
    for engine in fleet3.engines:
        for name, attrs in fleet3.containers(engine).items():
            assert ids[(engine.name, name)] == attrs["Id"]


def test_second_apply_plans_and_does_nothing(fleet3: Fleet) -> None:
    converged(fleet3)
    before = fleet3.ids()
    plan = fleet3.plan()
    assert plan.code == 0, plan.stdout + plan.stderr
    assert plan.json()["actions"] == []
    rows_before = len(fleet3.audit())
    again = converged(fleet3)
    assert again.json()["results"] == []
    assert fleet3.ids() == before
    assert len(fleet3.audit()) == rows_before
    text = fleet3.cli("plan", str(fleet3.file), "--db", str(fleet3.db))
    assert text.code == 0 and "nothing to do" in text.stdout


def test_new_client_image_replaces_only_clients(fleet3: Fleet) -> None:
    converged(fleet3)
    before = fleet3.ids()
    fleet3.doc["consul"]["client_image"] = AGENT_IMAGE_2
    fleet3.write()
    plan = fleet3.plan()
    assert plan.code == 2
    actions = plan.json()["actions"]
    assert [(a["kind"], a["host"], a["container"]) for a in actions] == [
        ("replace", "host2", "consul"),
        ("replace", "host3", "consul"),
    ]
    for action in actions:
        assert action["reasons"] == [{"field": "image", "old": AGENT_IMAGE_1, "new": AGENT_IMAGE_2}]
    text = fleet3.cli("plan", str(fleet3.file), "--db", str(fleet3.db))
    assert f"image: '{AGENT_IMAGE_1}' -> '{AGENT_IMAGE_2}'" in text.stdout
    converged(fleet3)
    after = fleet3.ids()
    assert after[("host1", "consul")] == before[("host1", "consul")]  # the server is untouched
    for engine in fleet3.engines:
        assert after[(engine.name, "registrator")] == before[(engine.name, "registrator")]
        assert set(fleet3.containers(engine)) == {"consul", "registrator"}  # no leftover temporaries
    for engine in fleet3.engines[1:]:
        attrs = fleet3.containers(engine)["consul"]
        assert after[(engine.name, "consul")] != before[(engine.name, "consul")]
        assert attrs["Config"]["Image"] == AGENT_IMAGE_2 and attrs["State"]["Running"]


def test_client_only_change_keeps_server_container(fleet3: Fleet) -> None:
    converged(fleet3)
    before = fleet3.ids()
    fleet3.doc["hosts"][1]["advertise"] = "127.0.10.42"  # a client-only change
    fleet3.doc["hosts"][2]["registrator"] = False
    fleet3.write()
    run = converged(fleet3)
    kinds = sorted((r["kind"], r["host"], r["container"]) for r in run.json()["results"])
    assert kinds == [
        ("remove", "host3", "registrator"),
        ("replace", "host2", "consul"),
        ("replace", "host2", "registrator"),
    ]
    after = fleet3.ids()
    assert after[("host1", "consul")] == before[("host1", "consul")]
    assert after[("host3", "consul")] == before[("host3", "consul")]
    assert ("host3", "registrator") not in after


def test_growing_servers_does_not_replace_existing_agents(fleet3: Fleet) -> None:
    converged(fleet3)
    fleet3.wait_consul_healthy()  # a server is disrupted next: its gate asks for a healthy cluster
    before = fleet3.ids()
    fleet3.doc["hosts"][1]["role"] = "server"
    fleet3.write()
    run = converged(fleet3)
    changed = {(r["host"], r["container"]) for r in run.json()["results"]}
    assert changed == {("host2", "consul")}
    after = fleet3.ids()
    assert after[("host1", "consul")] == before[("host1", "consul")]
    assert after[("host3", "consul")] == before[("host3", "consul")]


def test_host_removed_from_file_loses_only_its_containers(fleet3: Fleet) -> None:
    converged(fleet3)
    before = fleet3.ids()
    fleet3.doc["hosts"] = fleet3.doc["hosts"][:2]
    fleet3.write()
    plan = fleet3.plan()
    assert plan.code == 2
    assert plan.json()["retired_hosts"] == ["host3"]
    run = converged(fleet3)
    assert sorted((r["kind"], r["host"], r["container"]) for r in run.json()["results"]) == [
        ("remove", "host3", "consul"),
        ("remove", "host3", "registrator"),
    ]
    assert fleet3.containers(fleet3.engines[2]) == {}
    after = fleet3.ids()
    for key in [k for k in before if k[0] != "host3"]:
        assert after[key] == before[key]
    # forgotten once empty: the next plan has nothing to do
    assert fleet3.plan().code == 0


def test_unmanaged_name_collision_is_blocked_and_untouched(fleet3: Fleet) -> None:
    # the hand-run stand-in answers no agent API, so host2's registrator waits agent_timeout for it
    # (then fails, as it should): 5 s shows that as well as the default 30 s
    fleet3.doc["rollout"]["agent_timeout"] = 5
    fleet3.write()
    engine = fleet3.engines[1]
    client = engine.client()
    try:
        hand_run = client.containers.run(
            STANDIN_CONSUL_1, ["agent", "-by-hand"], name="consul", network_mode="host", detach=True
        )
    finally:
        client.close()
    run = fleet3.apply()
    assert run.code == 1
    plan = run.json()["plan"]
    blocked = [a for a in plan["actions"] if a["kind"] == "blocked"]
    assert [(a["host"], a["container"]) for a in blocked] == [("host2", "consul")]
    assert "--adopt host2/consul" in blocked[0]["reasons"][0]["message"]
    found = fleet3.containers(engine)["consul"]
    assert found["Id"] == hand_run.id and found["State"]["Running"]
    assert f"{LABEL}.managed-by" not in (found["Config"]["Labels"] or {})
    # everything else converged, and the block is in the audit log
    assert fleet3.containers(fleet3.engines[0])["consul"]["State"]["Running"]
    rows = fleet3.audit("--kind", "blocked")
    assert [(r["host"], r["container"], r["status"]) for r in rows] == [("host2", "consul", "skipped")]
    # explicit adoption replaces it, audited like any action
    adopted = fleet3.apply("--adopt", "host2/consul")
    assert adopted.code == 0, adopted.stdout + adopted.stderr
    now = fleet3.containers(engine)["consul"]
    assert now["Id"] != hand_run.id
    assert now["Config"]["Labels"][f"{LABEL}.managed-by"] == "itest"
    assert [r["status"] for r in fleet3.audit("--kind", "adopt")] == ["succeeded"]


def test_stopped_container_is_started_and_deleted_one_recreated(fleet3: Fleet) -> None:
    converged(fleet3)
    before = fleet3.ids()
    client1, client2 = fleet3.engines[0].client(), fleet3.engines[1].client()
    try:
        client1.containers.get("consul").stop(timeout=5)
        client2.containers.get("registrator").remove(force=True)
    finally:
        client1.close()
        client2.close()
    run = converged(fleet3)
    assert sorted((r["kind"], r["host"], r["container"]) for r in run.json()["results"]) == [
        ("create", "host2", "registrator"),
        ("start", "host1", "consul"),
    ]
    after = fleet3.ids()
    assert after[("host1", "consul")] == before[("host1", "consul")]  # started, not replaced
    assert fleet3.containers(fleet3.engines[0])["consul"]["State"]["Running"]
    assert fleet3.containers(fleet3.engines[1])["registrator"]["State"]["Running"]


def test_engine_down_other_hosts_converge_and_failure_is_audited(fleet3: Fleet) -> None:
    down = fleet3.engines[2]
    down.stop()
    run = fleet3.apply()
    assert run.code == 1
    result = run.json()
    assert result["status"] == "failed"
    assert "host3" in result["plan"]["unreachable"]
    for engine in fleet3.engines[:2]:
        assert all(a["State"]["Running"] for a in fleet3.containers(engine).values())
        assert set(fleet3.containers(engine)) == {"consul", "registrator"}
    failed = fleet3.audit("--host", "host3", "--status", "failed")
    assert [r["kind"] for r in failed] == ["observe"]
    assert failed[0]["error"]
    down.start()
    assert converged(fleet3).json()["status"] == "succeeded"
    assert set(fleet3.containers(down)) == {"consul", "registrator"}


def test_missing_image_is_a_clear_error_and_tears_nothing_down(fleet3: Fleet) -> None:
    converged(fleet3)
    before = fleet3.ids()
    # A registry on a closed loopback port: the engine's pull fails at once, and nothing leaves
    # the machine (the network rule: tests never reach a public registry).
    missing = "127.0.0.1:9/consul-reconciler-standin/no-such-image:9"
    fleet3.doc["registrator"]["image"] = missing
    fleet3.write()
    run = fleet3.apply()
    assert run.code == 1
    errors = [r["error"] for r in run.json()["results"] if r["status"] == "failed"]
    assert len(errors) == 3
    assert all(f"cannot pull image {missing}" in e for e in errors), errors
    assert {e.split(":")[0] for e in errors} == {"host host1", "host host2", "host host3"}
    assert fleet3.ids() == before
    for engine in fleet3.engines:
        assert all(a["State"]["Running"] for a in fleet3.containers(engine).values())


def test_removal_limit_refuses_the_pass(fleet3: Fleet) -> None:
    converged(fleet3)
    before = fleet3.ids()
    fleet3.doc["hosts"] = fleet3.doc["hosts"][:1]
    fleet3.write()
    run = fleet3.apply("--max-removals", "3")
    assert run.code == 1
    assert "more than the limit of 3" in run.json()["refused"]
    assert fleet3.ids() == before


def test_gossip_key_reaches_the_agent_but_no_listing(fleet3: Fleet) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    fleet3.env["CR_TEST_GOSSIP"] = key
    fleet3.doc["consul"]["encrypt"] = {"env": "CR_TEST_GOSSIP"}
    fleet3.write()
    outputs = [fleet3.plan(), fleet3.cli("render", str(fleet3.file)), converged(fleet3)]
    for out in outputs:
        assert key not in out.stdout and key not in out.stderr
    assert key not in fleet3.db.read_bytes().decode("latin-1")
    client = fleet3.engines[0].client()
    try:
        container = client.containers.get("consul")
        assert key not in json.dumps(container.attrs)
        code, output = container.exec_run(["cat", "/consul/config/encrypt.json"])
        assert code == 0 and json.loads(output) == {"encrypt": key}
    finally:
        client.close()
    fleet3.env.pop("CR_TEST_GOSSIP")
    unset = fleet3.apply()  # nothing to create: the unset variable does not stop a no-op pass
    assert unset.code == 0, unset.stdout + unset.stderr


def test_docker_errors_name_the_host(fleet3: Fleet) -> None:
    fleet3.doc["hosts"][1]["docker"] = "unix:///tmp/crfleet/nowhere/docker.sock"
    fleet3.write()
    run = fleet3.apply()
    assert run.code == 1
    assert "host2" in run.json()["plan"]["unreachable"]
    with pytest.raises(docker.errors.NotFound):
        fleet3.engines[1].client().containers.get("consul")


def test_json_logs_one_line_per_action_with_fields(fleet3: Fleet) -> None:
    run = fleet3.cli("--log-format", "json", "apply", str(fleet3.file), "--db", str(fleet3.db))
    assert run.code == 0, run.stderr
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.strip()]
    actions = [line for line in lines if "kind" in line]
    assert sorted((a["host"], a["container"], a["kind"]) for a in actions) == sorted(
        (e.name, name, "create") for e in fleet3.engines for name in ("consul", "registrator")
    )
    assert all(a["reason"] == [{"message": "container is missing"}] and a["level"] == "info" for a in actions)


@pytest.mark.parametrize(
    "bad",
    [
        "cluster: itest\nhosts: [ {name: h1, docker: 'unix:///x', advertise: 127.0.10.1, role: boss} ]\n",
        "cluster: itest\nhosts:\n  - name: [unclosed\n",
        "cluster: itest\nhosts: []\n",
    ],
)
def test_bad_topology_touches_nothing(fleet3: Fleet, bad: str) -> None:
    converged(fleet3)
    before = fleet3.ids()
    rows = len(fleet3.audit())
    fleet3.file.write_text(bad)
    for command in (fleet3.apply, fleet3.plan):
        run = command()
        assert run.code == 1
        assert "is not a valid topology" in run.stderr and run.stdout == ""
    assert fleet3.ids() == before
    assert len(fleet3.audit()) == rows
    for engine in fleet3.engines:
        assert all(a["State"]["Running"] for a in fleet3.containers(engine).values())


def test_client_side_changes_respect_the_in_flight_bound(fleet3: Fleet) -> None:
    converged(fleet3)
    fleet3.doc["rollout"]["max_parallel"] = 1
    fleet3.doc["consul"]["client_image"] = AGENT_IMAGE_2
    fleet3.write()
    run = converged(fleet3)
    assert sorted((r["host"], r["container"]) for r in run.json()["results"]) == [
        ("host2", "consul"),
        ("host3", "consul"),
    ]
    rows = [r for r in fleet3.audit("--kind", "replace") if r["role"] == "client"]
    spans = sorted((r["started_at"], r["finished_at"]) for r in rows)
    assert len(spans) == 2
    assert spans[0][1] <= spans[1][0]  # one host at a time: the second began after the first ended
