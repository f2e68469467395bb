"""Agent config files on each host (consul.config_files with host_path), on real engines: mounted
read-only, their hash recorded in the agent when it is made, an edit on the host (a new file renamed
over the old one, as editors and configuration tools write) found through the engine and rolled out,
and a file Consul would refuse, or a missing one, refused with nothing stopped."""

from __future__ import annotations

import json
import os
from pathlib import Path

from testbed.fleet import Engine
from tests.integration.harness import Fleet

TARGET = "/consul/config/extra.json"


def write_as_an_editor(path: Path, text: str) -> None:
    """A new file renamed over the old: the running agent's mount keeps the old one (its inode)."""
    fresh = path.with_name(path.name + ".tmp")
    fresh.write_text(text)
    os.replace(fresh, path)


def agents(fleet: Fleet) -> dict[str, str]:
    return {e.name: fleet.containers(e)["consul"]["Id"] for e in fleet.engines}


def test_a_file_on_each_host_is_mounted_and_an_edit_there_replaces_the_agents(
    clean_fleet: list[Engine], tmp_path: Path
) -> None:
    fleet = Fleet(clean_fleet, tmp_path, cluster="mounted")
    extra = tmp_path / "consul.d" / "extra.json"  # the same path on every host (one machine here)
    extra.parent.mkdir()
    extra.write_text(json.dumps({"node_meta": {"zone": "z1"}}))
    fleet.doc["consul"]["config_files"] = [{"host_path": str(extra)}]
    fleet.write()
    run = fleet.apply()
    assert run.code == 0, run.stdout + run.stderr
    for engine in fleet.engines:
        agent = fleet.containers(engine)["consul"]
        [mount] = [m for m in agent["Mounts"] if m["Destination"] == TARGET]
        assert (mount["Source"], mount["RW"]) == (str(extra), False)
    again = fleet.plan()
    assert again.code == 0, again.stdout + again.stderr  # read on the host, as the agents read it

    # edited on the host: every agent is replaced (the field named, the content never shown), and the
    # view containers that read the files are gone again
    write_as_an_editor(extra, json.dumps({"node_meta": {"zone": "z2"}}))
    planned = fleet.plan()
    assert planned.code == 2, planned.stdout + planned.stderr
    replaces = [a for a in planned.json()["actions"] if a["kind"] == "replace"]
    assert sorted(a["host"] for a in replaces) == ["host1", "host2", "host3"]
    assert all(a["reasons"][0]["field"] == "config_files" for a in replaces)
    assert "extra.json sha256:" in replaces[0]["reasons"][0]["new"] and "z2" not in planned.stdout
    before = agents(fleet)
    run = fleet.apply()
    assert run.code == 0, run.stdout + run.stderr
    after = agents(fleet)
    assert all(after[host] != before[host] for host in before)
    assert fleet.plan().code == 0
    assert all(not name.endswith("-config-view") for e in fleet.engines for name in fleet.containers(e))

    # a file Consul would refuse, then a missing one: each a clear error naming the host and the file,
    # and nothing stopped
    write_as_an_editor(extra, '["not", "an", "object"]')
    run = fleet.apply()
    assert run.code != 0
    assert "extra.json is not a JSON object" in run.stdout + run.stderr
    assert "host host1" in run.stdout + run.stderr
    assert agents(fleet) == after
    extra.unlink()
    run = fleet.apply()
    assert run.code != 0
    assert str(extra) in run.stdout + run.stderr and "does not exist" in run.stdout + run.stderr
    assert agents(fleet) == after
    for engine in fleet.engines:
        assert fleet.containers(engine)["consul"]["State"]["Running"]
