"""Dangerous changes on real engines, against real Consul servers: a new datacenter for a running
cluster is refused by `apply` (nothing touched, the refusal audited) and by `plan`, and goes ahead
once the document acknowledges it (checked with `plan`: a whole-cluster datacenter move would be a
long rollout, and what it does is the rollout tests' subject)."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.fleet import Engine
from tests.integration.harness import Fleet


def three_real_servers(engines: list[Engine], tmp: Path) -> Fleet:
    fleet = Fleet(engines[:3], tmp, cluster="danger")
    fleet.use_real_consul()
    fleet.doc["consul"]["ui"] = False
    for host in fleet.doc["hosts"]:
        host["role"] = "server"
    fleet.write()
    return fleet


def test_a_new_datacenter_is_refused_until_acknowledged(clean_fleet: list[Engine], tmp_path: Path) -> None:
    fleet = three_real_servers(clean_fleet, tmp_path)
    first = fleet.apply()
    assert first.code == 0, first.stdout + first.stderr
    fleet.wait_consul_healthy(3, timeout=90)
    before = fleet.ids()

    fleet.doc["datacenter"] = "dc2"
    fleet.write()
    refused = fleet.apply()
    assert refused.code == 1, refused.stdout + refused.stderr
    result = refused.json()
    assert result["status"] == "refused" and result["results"] == []
    assert result["refused"].startswith("dangerous change refused, nothing done: datacenter: ")
    assert "[acknowledge: datacenter]" in result["refused"]
    assert "add to the document: acknowledge: [datacenter]" in result["refused"]
    assert [(d["acknowledgement"], d["acknowledged"]) for d in result["plan"]["dangers"]] == [
        ("datacenter", False)
    ]
    assert fleet.ids() == before  # not a container touched
    fleet.wait_consul_healthy(3, timeout=10)  # and Consul as it was

    runs = fleet.cli("audit", "--runs", "--db", str(fleet.db), "--json")
    assert runs.code == 0, runs.stderr
    run = next(r for r in runs.json()["runs"] if r["id"] == result["run_id"])
    assert run["status"] == "refused" and run["error"] == result["refused"]
    assert fleet.audit("--run", str(result["run_id"])) == []  # no action started

    shown = fleet.cli("plan", str(fleet.file), "--db", str(fleet.db))
    assert shown.code == 1, shown.stdout + shown.stderr
    assert shown.stdout.startswith("REFUSED: 1 dangerous change, nothing done:\n  ! datacenter: ")
    assert "      acknowledge: datacenter\n" in shown.stdout

    fleet.doc["acknowledge"] = ["datacenter"]
    fleet.write()
    planned = fleet.plan()
    assert planned.code == 2, planned.stdout + planned.stderr  # changes pending, none refused
    intended = planned.json()
    assert intended["refused"] is None
    assert [(d["acknowledgement"], d["acknowledged"]) for d in intended["dangers"]] == [("datacenter", True)]
    assert sorted((a["kind"], a["host"]) for a in intended["actions"] if a["container"] == "consul") == [
        ("replace", e.name) for e in fleet.engines
    ]
    text = fleet.cli("plan", str(fleet.file), "--db", str(fleet.db))
    assert text.code == 2 and text.stdout.startswith("acknowledged: datacenter: "), text.stdout
    assert fleet.ids() == before

    # the other dangerous changes, each refused by `plan` against the running servers, then let
    # through by its acknowledgement
    fleet.env["CR_TEST_GOSSIP"] = base64.b64encode(bytes(32)).decode()
    changes: dict[str, Callable[[dict[str, Any]], None]] = {
        "node-name:host2": lambda doc: doc["hosts"][1].update(node="renamed"),
        "server-to-client:host3": lambda doc: doc["hosts"][2].update(role="client"),
        "gossip-key": lambda doc: doc["consul"].update(encrypt={"env": "CR_TEST_GOSSIP"}),
        "remove-servers": lambda doc: doc.update(hosts=doc["hosts"][:1]),
    }
    original = copy.deepcopy(fleet.doc)
    original.pop("acknowledge")
    original["datacenter"] = "dc1"
    for acknowledgement, change in changes.items():
        fleet.doc = copy.deepcopy(original)
        change(fleet.doc)
        fleet.write()
        planned = fleet.plan()
        assert planned.code == 1 and planned.json()["refused"], (acknowledgement, planned.stdout)
        found = [(d["acknowledgement"], d["acknowledged"]) for d in planned.json()["dangers"]]
        assert found == [(acknowledgement, False)], (acknowledgement, found)
        fleet.doc["acknowledge"] = [acknowledgement]
        fleet.write()
        planned = fleet.plan()
        assert planned.code == 2 and planned.json()["refused"] is None, (acknowledgement, planned.stdout)
    assert fleet.ids() == before
