"""The real Consul of the suite (testbed/real_consul.py): built from its Go module, in an image that keeps
the official image's contract, so the product renders the same command lines for it; and a real
cluster formed in whatever order its agents start."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from testbed.controller_harness import wait_for
from testbed.fleet import Engine
from testbed.real_consul import (
    CONSUL_VERSION,
    REAL_CONSUL_1,
    REAL_CONSUL_2,
    build,
    ensure_images,
    reported_version,
)
from tests.integration.consul_checks import try_get
from tests.integration.harness import Fleet


def test_the_binary_is_the_pinned_release_built_static() -> None:
    binary = build(say=False)
    assert reported_version(binary) == CONSUL_VERSION
    with binary.open("rb") as handle:
        head = handle.read(4096)
    assert head[:4] == b"\x7fELF"
    assert b"/lib64/ld-linux" not in head and b"/lib/ld-linux" not in head  # no interpreter: static
    assert Path(__file__).resolve().parents[2] not in binary.parents  # cached outside the repository


def test_the_image_keeps_the_official_contract_and_is_not_mistaken_for_it(clean_fleet: list[Engine]) -> None:
    engine = clean_fleet[0]
    old, new = ensure_images([engine])
    assert (old, new) == (REAL_CONSUL_1, REAL_CONSUL_2)
    assert not old.startswith(("hashicorp/", "consul:", "docker.io/")), old
    with contextlib.closing(engine.client()) as client:
        assert client.images.get(old).id != client.images.get(new).id  # a rollout has a real change
        printed = client.containers.run(old, ["version"], remove=True, network_mode="none").decode()
        assert f"Consul v{CONSUL_VERSION}" in printed
        # `agent ...` gets the image's data and config folders, as the official entrypoint gives them
        agent = client.containers.run(
            old,
            ["agent", "-server", "-bootstrap-expect=1", "-node=probe", f"-bind={engine.address}", "-client",
             engine.address],
            network_mode="host",
            detach=True,
            name="probe",
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            found = None
            while found is None and time.monotonic() < deadline:
                found = try_get(f"{engine.address}:8500", "/v1/agent/self", None)
                time.sleep(0.1)
            assert found is not None, agent.logs().decode()[-2000:]
            config = found["DebugConfig"]
            assert config["DataDir"] == "/consul/data"
            assert config["DisableUpdateCheck"] is True  # from /consul/config/test.json: nothing leaves
            assert found["Config"]["Version"] == CONSUL_VERSION
        finally:
            agent.remove(force=True)


def test_clients_started_before_their_servers_join_them_by_retry_join(
    clean_fleet5: list[Engine], tmp_path: Path
) -> None:
    """The servers' hosts are down while the clients start (their -retry-join finds nobody); once the
    hosts are back and the servers created, every client joins them, without being touched again."""
    fleet = Fleet(clean_fleet5, tmp_path, cluster="order")
    fleet.use_real_consul()
    for i, host in enumerate(fleet.doc["hosts"]):
        host["role"] = "server" if i < 3 else "client"
    fleet.write()
    servers, clients = clean_fleet5[:3], clean_fleet5[3:]
    for engine in servers:
        engine.stop()
    try:
        first = fleet.apply()
        assert first.code != 0  # the servers' hosts are unreachable, and said so
        for engine in servers:
            assert f"host {engine.name}" in first.stderr or engine.name in first.stdout, first.stderr
        for engine in clients:
            attrs = fleet.containers(engine)["consul"]
            assert attrs["State"]["Running"], engine.name
        client_ids = {e.name: fleet.containers(e)["consul"]["Id"] for e in clients}
        time.sleep(2)  # the clients try to join, and fail: no server answers yet
        assert not try_get(f"{clients[0].address}:8500", "/v1/status/leader", None)
    finally:
        for engine in servers:
            engine.start()
    second = fleet.apply()
    assert second.code == 0, second.stdout + second.stderr
    fleet.wait_consul_healthy(servers=3, timeout=60)

    def alive() -> dict[str, int]:
        found = try_get(f"{servers[0].address}:8500", "/v1/agent/members", None) or []
        return {m["Name"]: int(m["Status"]) for m in found}

    wait_for(lambda: alive() == {e.name: 1 for e in clean_fleet5}, 90, "every agent an alive member")
    for engine in clients:  # joined by their own retry, not recreated
        assert fleet.containers(engine)["consul"]["Id"] == client_ids[engine.name]
        assert try_get(f"{engine.address}:8500", "/v1/status/leader", None)
