"""Tests of the test infrastructure itself: the local Docker engines and the stand-in images."""

from __future__ import annotations

import contextlib
import time

import docker
import pytest
from docker.models.containers import Container

from testbed.fleet import (
    STANDIN_CONSUL_1,
    STANDIN_CONSUL_2,
    STANDIN_IMAGES,
    STANDIN_REGISTRATOR_1,
    Engine,
    fleet_net,
    reset_engines,
)


def _wait_for_logs(container: Container, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        logs = bytes(container.logs()).decode()
        if logs or time.monotonic() > deadline:
            return logs
        time.sleep(0.05)


def test_three_engines_answer_ping_with_distinct_data_roots(fleet: list[Engine]) -> None:
    assert [engine.name for engine in fleet] == ["host1", "host2", "host3"]
    net = fleet_net()  # 127.0.10 unless CR_FLEET_NET gives a second session its own addresses
    assert [engine.address for engine in fleet] == [f"{net}.1", f"{net}.2", f"{net}.3"]
    assert net.startswith("127.")
    roots = set()
    for engine in fleet:
        assert engine.is_running()
        assert engine.url == f"unix://{engine.socket_path}"
        assert len(str(engine.socket_path)) < 100
        with contextlib.closing(engine.client()) as client:
            assert client.ping() is True
            info = client.info()
            assert info["DockerRootDir"] == str(engine.data_root)
            tags = {tag for image in client.images.list() for tag in image.tags}
            assert set(STANDIN_IMAGES) <= tags
        roots.add(info["DockerRootDir"])
    assert len(roots) == 3


def test_standin_images_are_distinct(fleet: list[Engine]) -> None:
    with contextlib.closing(fleet[0].client()) as client:
        ids = {tag: client.images.get(tag).id for tag in STANDIN_IMAGES}
        consul = client.images.get(STANDIN_CONSUL_1)
    assert len(set(ids.values())) == 3
    assert consul.attrs["Config"]["Entrypoint"] == ["/standin-entrypoint"]
    assert not consul.attrs["Config"]["Cmd"]


@pytest.mark.parametrize(
    ("image", "command"),
    [
        (STANDIN_CONSUL_1, ["agent", "-server", "-node=node1", "-bind=127.0.10.2", "-bootstrap-expect=3"]),
        (STANDIN_CONSUL_2, ["agent", "-node=client1", "-retry-join=127.0.10.1"]),
        (STANDIN_REGISTRATOR_1, ["-internal", "-ip", "127.0.10.2", "consul://127.0.10.2:8500"]),
    ],
)
def test_standin_logs_its_command_line_and_stops_promptly(
    clean_fleet: list[Engine], image: str, command: list[str]
) -> None:
    engine = clean_fleet[1]
    with contextlib.closing(engine.client()) as client:
        container = client.containers.run(image, command, detach=True, network_mode="host", name="standin")
        assert _wait_for_logs(container).splitlines() == [" ".join(command)]
        container.reload()
        assert container.status == "running"
        if image != STANDIN_REGISTRATOR_1:
            listing = container.exec_run(["ls", "/consul"]).output.decode().split()
            assert listing == ["config", "data"]

        container.stop()
        container.reload()
        assert container.status == "exited"
        # 0: it ended on SIGTERM, as an agent does; one that ignored it would be killed at the stop
        # timeout and show 137 (no timing asserted: on a loaded machine a prompt stop can take seconds)
        assert container.attrs["State"]["ExitCode"] == 0


def test_stopped_engine_refuses_and_comes_back_with_its_containers(clean_fleet: list[Engine]) -> None:
    engine = clean_fleet[2]
    with contextlib.closing(engine.client()) as client:
        client.containers.run(
            STANDIN_CONSUL_1,
            ["agent", "-server"],
            detach=True,
            network_mode="host",
            name="server",
            restart_policy={"Name": "always"},
        )
        client.containers.run(STANDIN_REGISTRATOR_1, ["consul://127.0.10.3:8500"], detach=True, name="plain")

    engine.stop()  # bounded by Engine.stop itself; no timing asserted here (a loaded machine is slow)
    assert not engine.is_running()
    assert not engine.ping()
    with pytest.raises(docker.errors.DockerException):
        engine.client()
    # The other hosts are unaffected.
    assert all(other.is_running() for other in clean_fleet if other is not engine)

    engine.start()
    assert engine.is_running()
    with contextlib.closing(engine.client()) as client:
        listed = {c.name: c for c in client.containers.list(all=True)}
        assert set(listed) == {"server", "plain"}
        # A container with a restart policy is running again; one without stays stopped.
        deadline = time.monotonic() + 10
        while listed["server"].status != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
            listed["server"].reload()
        assert listed["server"].status == "running"
        assert listed["plain"].status == "exited"
        assert listed["plain"].attrs["State"]["ExitCode"] == 0


def test_clean_fleet_restarts_a_stopped_engine_and_removes_containers(fleet: list[Engine]) -> None:
    engine = fleet[0]
    with contextlib.closing(engine.client()) as client:
        client.containers.run(STANDIN_REGISTRATOR_1, ["x"], detach=True, name="leftover")
    engine.stop()
    assert not engine.is_running()
    reset_engines(fleet)
    assert engine.is_running()
    for each in fleet:
        with contextlib.closing(each.client()) as client:
            assert client.containers.list(all=True) == []
