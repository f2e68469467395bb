"""`import` against the blog recipe's hand-typed `docker run` lines, on real engines with the real
Consul: the topology it writes loads, and `render` gives back each container field by field, up to
the documented normalisations (desired_state/takeover.py)."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from desired_state.handrun import CONSUL_BOOL_FLAGS, parse_flags
from desired_state.load import load_topology
from desired_state.render import render
from desired_state.spec import ContainerSpec
from testbed.controller_harness import audit_rows, wait_for
from testbed.fleet import STANDIN_REGISTRATOR_1, Engine, ensure_standin_images
from testbed.real_consul import ensure_images
from tests.integration.consul_checks import Sampler, images, leader_node
from tests.integration.harness import LABEL, Fleet

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
# what render writes differently, by design: joins from the topology, the expectation from the number
# of servers, the datacenter always written
_NORMALISED = {"join", "retry-join", "rejoin", "bootstrap-expect", "datacenter"}


def _run(engine: Engine, image: str, command: list[str], **options: Any) -> None:
    with contextlib.closing(engine.client()) as client:
        client.containers.run(image, command, detach=True, restart_policy={"Name": "always"}, **options)


def _by_hand(fleet: Fleet, image: str) -> None:
    """The blog's lines on each engine: a server on the first, clients joining it on the others, a
    Registrator beside each agent. Every agent binds its host's own loopback address (the engines
    share this machine's network), which is what the blog's -client 0.0.0.0 means on a host of its own.
    The blog's bridge variant (-p ...) cannot run here: the test engines have no bridge network (they
    publish nothing beyond loopback); its reading is unit-tested on Docker's inspect shape."""
    server = fleet.engines[0].address
    for i, engine in enumerate(fleet.engines):
        data = fleet.tmp / f"hand-{engine.name}"
        data.mkdir()
        addr = engine.address
        if i == 0:
            command = ["agent", "-server", "-bootstrap-expect=1", f"-node={engine.name}", "-rejoin"]
        else:
            command = ["agent", f"-node={engine.name}", f"-join={server}"]
        command += ["-client", addr, "-bind", addr, "-advertise", addr, "-ui"]
        volumes = {str(data): {"bind": "/consul/data", "mode": "rw"}}
        _run(engine, image, command, name="consul", network_mode="host", volumes=volumes)
        _run(
            engine,
            STANDIN_REGISTRATOR_1,
            ["-internal", "-ip", addr, f"consul://{addr}:8500"],
            name="registrator",
            network_mode="host",
            volumes={engine.url.removeprefix("unix://"): {"bind": "/tmp/docker.sock", "mode": "rw"}},
        )


def _flags(command: tuple[str, ...] | list[str]) -> dict[str, str]:
    flags, rest = parse_flags(list(command)[1:], CONSUL_BOOL_FLAGS)
    assert rest == []
    return {f.name: f.value for f in flags if f.name not in _NORMALISED}


def _same_container(spec: ContainerSpec, attrs: dict[str, Any]) -> None:
    """Field by field: what render says against what runs."""
    where = f"{spec.host}/{spec.name}"
    assert attrs["Config"]["Image"] == spec.image, where
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == spec.restart_policy, where
    mounts = sorted(f"{m['Source']}:{m['Destination']}" for m in attrs["Mounts"])
    assert mounts == sorted(m.record() for m in spec.mounts), where
    if spec.role == "registrator":
        assert tuple(attrs["Config"]["Cmd"]) == spec.command, where
        assert attrs["HostConfig"]["NetworkMode"] == "host", where
    else:
        assert _flags(attrs["Config"]["Cmd"]) == _flags(spec.command), where


def test_the_blogs_hand_run_cluster_imports_renders_back_and_is_adopted_in_place(
    clean_fleet: list[Engine], tmp_path: Path
) -> None:
    fleet = Fleet(clean_fleet, tmp_path, cluster="blog")
    old, new = ensure_images(fleet.engines)
    ensure_standin_images(fleet.engines, (STANDIN_REGISTRATOR_1,))
    _by_hand(fleet, old)
    fleet.wait_consul_healthy(1)
    out = tmp_path / "imported.yaml"
    hosts = [arg for e in fleet.engines for arg in ("--host", f"{e.name}={e.url}")]
    run = fleet.cli("import", *hosts, "--cluster", "blog", "-o", str(out))
    assert run.code == 0, run.stdout + run.stderr
    assert "-bootstrap-expect" not in run.stderr  # one server: the blog's 1 is right
    assert "note: " in run.stderr and "-join/-rejoin become -retry-join" in run.stderr
    topology = load_topology(out.read_bytes(), source=str(out)).topology
    assert [(h.name, h.role.value) for h in topology.hosts] == [
        (e.name, "server" if i == 0 else "client") for i, e in enumerate(fleet.engines)
    ]
    rendered = render(topology)
    for engine, host in zip(fleet.engines, rendered.hosts, strict=True):
        running = fleet.containers(engine)
        assert {s.name for s in host.specs} == set(running) == {"consul", "registrator"}
        for spec in host.specs:
            _same_container(spec, running[spec.name])
    # validate and plan read it as any topology: every container is still someone else's
    plan = fleet.cli("plan", str(out), "--db", str(fleet.db), "--json")
    kinds = {a["kind"] for a in plan.json()["actions"]}
    assert kinds == {"blocked"}, plan.stdout
    # adopt all: each container matches its spec, so each is taken over as it runs
    before = _started(fleet)
    db = ["--db", str(fleet.db)]
    plan = fleet.cli("plan", str(out), *db, "--adopt", "all")
    assert plan.code == 2, plan.stdout + plan.stderr
    assert plan.stdout.count("= adopt in place") == 6 and "~ adopt by replacement" not in plan.stdout
    adopted = fleet.cli("apply", str(out), *db, "--adopt", "all")
    assert adopted.code == 0, adopted.stdout + adopted.stderr
    assert _started(fleet) == before  # nothing restarted, nothing replaced
    rows = fleet.audit("--kind", "adopt-in-place")
    assert sorted((r["host"], r["container"], r["status"]) for r in rows) == sorted(
        (host, name, "succeeded") for host, name in before
    )
    assert {r["container_id"] for r in rows} == {cid for cid, _ in before.values()}
    again = fleet.cli("plan", str(out), *db)
    assert again.code == 0, again.stdout  # ours now: nothing to do, nothing blocked
    # replaced only when the desired state next changes: the clients' image, with our labels
    doc = yaml.safe_load(out.read_text())
    doc["consul"]["client_image"] = new
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    changed = fleet.cli("apply", str(out), *db)
    assert changed.code == 0, changed.stdout + changed.stderr
    after = _started(fleet)
    for (host, name), started in before.items():
        replaced = name == "consul" and host != fleet.engines[0].name
        assert (after[(host, name)] != started) == replaced, (host, name)
    for engine in fleet.engines[1:]:
        labels = fleet.containers(engine)["consul"]["Config"]["Labels"]
        assert (
            labels[f"{LABEL}.managed-by"] == "blog"
            and fleet.containers(engine)["consul"]["Config"]["Image"] == new
        )


def _import(fleet: Fleet, out: Path) -> dict[str, Any]:
    hosts = [arg for e in fleet.engines for arg in ("--host", f"{e.name}={e.url}")]
    run = fleet.cli("import", *hosts, "--cluster", "blog", "-o", str(out))
    assert run.code == 0, run.stdout + run.stderr
    doc: dict[str, Any] = yaml.safe_load(out.read_text())
    return doc


def _started(fleet: Fleet) -> dict[tuple[str, str], tuple[str, str]]:
    """(host, name) -> (container id, when it last started): what a restart or a replacement changes."""
    return {
        (e.name, name): (attrs["Id"], attrs["State"]["StartedAt"])
        for e in fleet.engines
        for name, attrs in fleet.containers(e).items()
    }


def _put_kv(addr: str, key: str, value: bytes) -> None:
    request = urllib.request.Request(f"http://{addr}:8500/v1/kv/{key}", data=value, method="PUT")
    with _OPENER.open(request, timeout=5) as response:
        assert json.loads(response.read()) is True


def _get_kv(addr: str, key: str) -> bytes | None:
    """The key's value (``?raw``), or None while no server answers with it."""
    try:
        with _OPENER.open(f"http://{addr}:8500/v1/kv/{key}?raw", timeout=2) as response:
            return bytes(response.read())
    except Exception:
        return None


def test_adopting_hand_run_servers_by_replacement_keeps_quorum_and_their_data(
    clean_fleet: list[Engine], tmp_path: Path
) -> None:
    """Three servers started by hand (the blog's lines with -bootstrap-expect=3), moved to another
    image by `apply --adopt all`: replaced one at a time through the gates, the leader last, with a
    leader throughout but for elections and never two servers down; the data folders are kept, so
    what was written in KV before is there after."""
    fleet = Fleet(clean_fleet, tmp_path, cluster="blog")
    old, new = ensure_images(fleet.engines)
    first = fleet.engines[0].address
    for engine in fleet.engines:
        data = tmp_path / f"hand-{engine.name}"
        data.mkdir()
        addr = engine.address
        command = ["agent", "-server", "-bootstrap-expect=3", f"-node={engine.name}", f"-join={first}"]
        command += ["-client", addr, "-bind", addr, "-advertise", addr, "-ui"]
        volumes = {str(data): {"bind": "/consul/data", "mode": "rw"}}
        _run(engine, old, command, name="consul", network_mode="host", volumes=volumes)
    fleet.wait_consul_healthy(3)
    wait_for(lambda: _try_put_kv(first, "blog/before", b"kept"), 30, "a KV write to the hand-run cluster")
    out = tmp_path / "imported.yaml"
    doc = _import(fleet, out)
    assert doc["registrator"] == {"enabled": False}
    doc["consul"]["image"] = new
    doc["rollout"] = {"deadline": 60, "stabilization": 1}
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    leader = leader_node(fleet, 3)
    addresses = {e.name: f"{e.address}:8500" for e in fleet.engines}
    with Sampler(addresses) as sampler:
        run = fleet.cli("apply", str(out), "--db", str(fleet.db), "--adopt", "all")
        assert run.code == 0, run.stdout + run.stderr
        fleet.wait_consul_healthy(3)
    replaced = audit_rows(fleet.db, "SELECT node, status FROM actions WHERE kind='adopt' ORDER BY id")
    assert sorted(replaced) == sorted((e.name, "succeeded") for e in fleet.engines)
    assert replaced[-1][0] == leader  # the leader went last
    assert images(fleet, 3) == [new] * 3
    assert sampler.most_down() <= 1, sampler.most_down()
    windows = sampler.windows()
    assert all(after is not None for _length, _before, after in windows), windows
    for node in addresses:
        assert sampler.first_departure(node) in (2, 3), (node, sampler.changes.get(node))
    assert (
        wait_for(lambda: _get_kv(first, "blog/before"), 30, "the key written before the adoption") == b"kept"
    )


def _try_put_kv(addr: str, key: str, value: bytes) -> bool:
    try:
        _put_kv(addr, key, value)
    except Exception:
        return False
    return True
