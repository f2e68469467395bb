"""The Consul agent stand-in image (testbed/agent_image.py) running as containers on real engines.

One server container per engine of the fleet, host networking, each on its engine's loopback
address (``-client 127.0.10.N -advertise 127.0.10.N``, port 8500), ``-retry-join`` the others and
its data dir bind-mounted from a temporary folder, with the image's default timings (gossip 0.2 s,
failed after 1 s, stabilisation 2 s). The test talks to the containers over HTTP from the host and
checks the engines' own record of how the containers exited.

Run it on a fleet of its own, so that it does not disturb other integration runs::

    CR_FLEET_ROOT=/tmp/cragent .venv/bin/python -m pytest tests/integration/test_agent_image.py
    python -m testbed.fleet --root /tmp/cragent down --purge
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import docker.errors
import pytest
from docker.models.containers import Container

from testbed import agentprobe
from testbed.agent_image import (
    AGENT_IMAGE_1,
    AGENT_IMAGE_2,
    AGENT_VERSIONS,
    SOURCE_LABEL,
    ensure_agent_images,
)
from testbed.fleet import Engine

NAME = "standin-consul-agent"
call = agentprobe.call
# Containers start and gossip at the image's default timings: give them longer than the processes.
eventually = functools.partial(agentprobe.eventually, timeout=20.0, interval=0.1)


def _port_free(address: str) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, 8500))
        except OSError:
            return False
    return True


def run_server(
    engine: Engine, peers: Sequence[Engine], data_dir: Path, image: str = AGENT_IMAGE_1
) -> Container:
    """``docker run -d --net=host -v DATA:/consul/data IMAGE agent -server ...`` on one engine."""
    command = ["agent", "-server", f"-bootstrap-expect={len(peers) + 1}", f"-node={engine.name}"]
    command += ["-datacenter=dc1"]
    command += [f"-retry-join={peer.address}" for peer in peers]
    command += ["-client", engine.address, "-advertise", engine.address, "-ui"]
    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(engine.client()) as client:
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(NAME).remove(force=True)
        return client.containers.run(
            image,
            command,
            name=NAME,
            detach=True,
            network_mode="host",
            volumes={str(data_dir): {"bind": "/consul/data", "mode": "rw"}},
        )


def leader(engines: Sequence[Engine]) -> Engine:
    """The engine whose agent every given agent names as leader."""

    def agreed() -> str:
        answers = {call(e.address, "/v1/status/leader")[1] for e in engines}
        wanted = {f"{e.address}:8300" for e in engines}
        return str(answers.pop()) if len(answers) == 1 and answers <= wanted else ""

    rpc = eventually(agreed, what="one leader agreed by all")
    return next(e for e in engines if rpc == f"{e.address}:8300")


def healthy(engine: Engine, tolerance: int) -> bool:
    status, body = call(engine.address, "/v1/operator/autopilot/health")
    return status == 200 and body["Healthy"] is True and body["FailureTolerance"] == tolerance


def peers(engine: Engine) -> list[str]:
    status, body = call(engine.address, "/v1/status/peers")
    assert status == 200, (status, body)
    return sorted(body)


def member_status(engine: Engine, name: str) -> int:
    _, members = call(engine.address, "/v1/agent/members")
    return int({m["Name"]: m["Status"] for m in members}[name])


@pytest.fixture
def agent_fleet(clean_fleet: list[Engine]) -> Iterator[list[Engine]]:
    """The fleet with both agent images; every container is removed afterwards too."""
    busy = [e.address for e in clean_fleet if not _port_free(e.address)]
    if busy:
        pytest.fail(f"port 8500 is already taken on {busy} (another run of the stand-in?)", pytrace=False)
    ensure_agent_images(clean_fleet)
    yield clean_fleet
    for engine in clean_fleet:
        with contextlib.closing(engine.client()) as client, contextlib.suppress(docker.errors.NotFound):
            client.containers.get(NAME).remove(force=True)


def test_the_images_are_distinct_and_current(agent_fleet: list[Engine]) -> None:
    ids: dict[str, set[str]] = {AGENT_IMAGE_1: set(), AGENT_IMAGE_2: set()}
    for engine in agent_fleet:
        with contextlib.closing(engine.client()) as client:
            for tag in ids:
                image = client.images.get(tag)
                ids[tag].add(str(image.id))
                assert image.labels[SOURCE_LABEL]
                assert image.attrs["Config"]["Entrypoint"] == ["python3", "-u", "/agent_standin.py"]
                assert f"STANDIN_VERSION={AGENT_VERSIONS[tag]}" in image.attrs["Config"]["Env"]
    assert all(len(found) == 1 for found in ids.values())  # built once, copied: one id everywhere
    assert ids[AGENT_IMAGE_1] != ids[AGENT_IMAGE_2]


def test_three_server_containers_elect_stop_restart_and_leave(
    agent_fleet: list[Engine], tmp_path: Path
) -> None:
    containers = {
        e.index: run_server(e, [p for p in agent_fleet if p is not e], tmp_path / e.name) for e in agent_fleet
    }
    first = leader(agent_fleet)
    eventually(lambda: healthy(first, tolerance=1), what="autopilot healthy with 3 servers")
    assert all(peers(e) == sorted(f"{x.address}:8300" for x in agent_fleet) for e in agent_fleet)
    _, me = call(first.address, "/v1/agent/self")
    assert me["Config"]["NodeName"] == first.name and me["Config"]["Version"] == AGENT_VERSIONS[AGENT_IMAGE_1]
    logs = containers[first.index].logs().decode().splitlines()
    assert logs[0].startswith("agent -server -bootstrap-expect=3 -node=") and logs[0].endswith(" -ui")

    # docker stop: SIGTERM, the server stops at once (exit 0) without leaving; it is a failed voter.
    stopped, other = (e for e in agent_fleet if e is not first)
    node_id = (tmp_path / stopped.name / "node-id").read_text().strip()
    containers[stopped.index].stop(timeout=10)
    containers[stopped.index].reload()
    assert containers[stopped.index].attrs["State"]["ExitCode"] == 0  # SIGTERM handled (a SIGKILL is 137)
    eventually(lambda: member_status(first, stopped.name) == 4, what="the stopped server failed")
    status, body = call(first.address, "/v1/operator/autopilot/health")
    assert status == 429 and body["FailureTolerance"] == 0
    assert len(peers(first)) == 3 and leader([first, other]) is first

    # docker start: same data dir, same node id, a voter again, healthy again.
    containers[stopped.index].start()
    eventually(lambda: healthy(first, tolerance=1), what="healthy again after the restart")
    _, me = call(stopped.address, "/v1/agent/self")
    assert me["Config"]["NodeID"] == node_id

    # PUT /v1/agent/leave, synchronous as Consul's (after the 5 s drain): the container exits 0, the
    # peer set shrinks to 2, healthy with 2.
    assert call(other.address, "/v1/agent/leave", "PUT", timeout=30) == (200, None)
    assert containers[other.index].wait(timeout=10)["StatusCode"] == 0
    remaining = [first, stopped]
    eventually(lambda: all(peers(e) == sorted(f"{x.address}:8300" for x in remaining) for e in remaining))
    eventually(lambda: healthy(stopped, tolerance=0), what="healthy with 2 servers")
    assert member_status(first, other.name) == 3

    # The :2 image on the host that left, with its data: it rejoins as a non-voter, then gets a vote.
    run_server(other, remaining, tmp_path / other.name, image=AGENT_IMAGE_2)
    eventually(lambda: healthy(first, tolerance=1), what="healthy with the :2 server")
    _, body = call(first.address, "/v1/operator/autopilot/health")
    versions = {s["Name"]: s["Version"] for s in body["Servers"]}
    assert versions[other.name] == AGENT_VERSIONS[AGENT_IMAGE_2]
    assert versions[first.name] == AGENT_VERSIONS[AGENT_IMAGE_1]
