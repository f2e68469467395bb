"""Version-aware upgrades on real Consul (reconciler/versions.py): versions read from image tags.

The suite builds one Consul release (testbed/real_consul.py), so its two images are tagged here as
three versions (1.13.0, 1.14.0, 1.15.0): the controller reads versions from tags, and the agents,
all running the same release, form a real cluster whatever the tag says."""

from __future__ import annotations

import contextlib
from pathlib import Path

from testbed.controller_harness import audit_rows, wait_for
from testbed.fleet import Engine
from testbed.real_consul import REAL_CONSUL_1, REAL_CONSUL_2
from tests.integration.consul_checks import healthy
from tests.integration.harness import Fleet

REPO = "consul-reconciler-built/consul-versioned"
V13, V14, V15 = f"{REPO}:1.13.0", f"{REPO}:1.14.0", f"{REPO}:1.15.0"


def tag_versions(engines: list[Engine]) -> None:
    for engine in engines:
        with contextlib.closing(engine.client()) as client:
            client.images.get(REAL_CONSUL_1).tag(REPO, "1.13.0")
            client.images.get(REAL_CONSUL_1).tag(REPO, "1.14.0")
            client.images.get(REAL_CONSUL_2).tag(REPO, "1.15.0")


def test_clients_wait_for_their_servers_version_and_a_server_downgrade_is_refused(
    clean_fleet5: list[Engine], tmp_path: Path
) -> None:
    fleet = Fleet(clean_fleet5, tmp_path, cluster="versions")
    fleet.use_real_consul()
    tag_versions(clean_fleet5)
    fleet.doc["consul"] |= {"image": V14, "ui": False}
    fleet.doc["rollout"] |= {"deadline": 60, "stabilization": 1, "max_parallel": 2}
    fleet.doc["registrator"]["enabled"] = False
    for i, host in enumerate(fleet.doc["hosts"]):
        host["role"] = "server" if i < 3 else "client"
    fleet.write()
    run = fleet.apply()
    assert run.code == 0, run.stdout + run.stderr
    wait_for(lambda: healthy(fleet, 3), 60, "3 healthy servers at 1.14.0")

    # the clients alone to 1.15.0: every server runs 1.14.0, so they wait and nothing changes
    fleet.doc["consul"]["client_image"] = V15
    fleet.write()
    before = fleet.ids()
    run = fleet.apply()
    assert run.code == 1 and run.json()["status"] == "waiting", run.stdout
    waits = audit_rows(fleet.db, "SELECT node, error FROM actions WHERE status='waiting' ORDER BY node")
    assert [node for node, _ in waits] == ["host4", "host5"]
    assert (
        "would run Consul 1.15.0 while server(s) host1 (1.14.0), host2 (1.14.0), host3 (1.14.0)"
        in waits[0][1]
    )
    assert fleet.ids() == before

    # servers back to 1.13.0: refused, nothing done, the command says which field allows it
    fleet.doc["consul"] |= {"server_image": V13, "client_image": None}
    fleet.write()
    run = fleet.apply()
    assert run.code != 0 and run.json()["status"] == "refused", run.stdout
    assert "server downgrade refused (host1 1.14.0 -> 1.13.0" in run.stdout
    assert "rollout.allow_downgrade" in run.stdout
    assert fleet.ids() == before

    # everything to 1.15.0: one pass, every server replaced before the first client
    fleet.doc["consul"] = {"image": V15, "ui": False}
    fleet.write()
    run = fleet.apply()
    assert run.code == 0, run.stdout + run.stderr
    done = audit_rows(
        fleet.db,
        "SELECT role, started_at, finished_at FROM actions WHERE kind='replace' AND status='succeeded'",
    )
    servers = [row for row in done if row[0] == "server"]
    clients = [row for row in done if row[0] == "client"]
    assert len(servers) == 3 and len(clients) == 2
    assert max(s[2] for s in servers) <= min(c[1] for c in clients)
