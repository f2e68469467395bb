"""`import` against the blog recipe's hand-typed `docker run` lines, on real engines with the real
Consul: the topology it writes loads, and `render` gives back each container field by field, up to
the documented normalisations (desired_state/takeover.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from desired_state.load import load_topology
from desired_state.render import render
from desired_state.spec import ContainerSpec
from desired_state.takeover import CONSUL_BOOL_FLAGS, parse_flags
from tests.fleet import STANDIN_REGISTRATOR_1, Engine, ensure_standin_images
from tests.integration.harness import Fleet
from tests.real_consul import ensure_images

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


def test_the_blogs_hand_run_cluster_imports_and_renders_back(
    clean_fleet: list[Engine], tmp_path: Path
) -> None:
    fleet = Fleet(clean_fleet, tmp_path, cluster="blog")
    old, _new = ensure_images(fleet.engines)
    ensure_standin_images(fleet.engines, (STANDIN_REGISTRATOR_1,))
    _by_hand(fleet, old)
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
