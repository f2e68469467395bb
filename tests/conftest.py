"""Shared fixtures: a fleet of real, local Docker engines (see testbed/fleet.py).

Tests under tests/integration are marked ``integration`` automatically. Nothing is ever skipped:
if the engines cannot be brought up, every test that needs them fails with the reason.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.agent_image import ensure_agent_images
from testbed.agentprobe import Standin
from testbed.fleet import (
    Engine,
    FleetError,
    ensure_engines,
    ensure_standin_images,
    existing_engines,
    remove_containers,
    reset_engines,
)
from testbed.workers import worker_environment

FLEET_SIZE = 3
_INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_configure(config: pytest.Config) -> None:
    # each xdist worker its own engines, addresses and servers (testbed/workers.py); this runs before any
    # test module is imported, so module-level addresses (testbed/tlsengine.py, testbed/pgserver.py) see them
    os.environ.update(worker_environment(os.environ.get("PYTEST_XDIST_WORKER", ""), dict(os.environ)))


# scripts/test.sh gives each worker whole files (xdist's loadfile: loadgroup does not group under
# pytest 9, whose items ignore the node id xdist rewrites). A file marked ``first`` is long enough to
# set the suite's length, such as the server rollouts against real Consul (half of it): it comes
# first, so one worker starts it at once while the other takes everything else.
def _first(item: pytest.Item) -> bool:
    return item.get_closest_marker("first") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: not _first(item))  # a stable sort: the rest keeps its order


def _engines(count: int) -> list[Engine]:
    """``count`` running engines with the stand-in images (busybox, and the Consul agent stand-in); a
    missing engine fails the test."""
    try:
        engines = ensure_engines(count)
        ensure_standin_images(engines)
        ensure_agent_images(engines)
    except FleetError as error:
        pytest.fail(f"the Docker test fleet could not be brought up: {error}", pytrace=False)
    return engines


def _cleaned(engines: list[Engine]) -> list[Engine]:
    """The engines all running (a stopped one is started again) and without containers, and no
    container left on this session's other engines either (host4 and host5 of a five-server test):
    a real Consul server left there keeps reconnecting to its old peers' addresses (Serf retries a
    failed member for 72 h, reconnect_timeout), so it would join the next test's cluster on them, as
    a non-voter that autopilot holds unhealthy for good."""
    others = [e for e in existing_engines() if e.index > len(engines) and e.is_running()]
    try:
        reset_engines(engines)
        remove_containers(others)
    except FleetError as error:
        pytest.fail(f"the Docker test fleet could not be reset: {error}", pytrace=False)
    return engines


@pytest.fixture(scope="session")
def fleet() -> list[Engine]:
    """Three running Docker engines (host1..host3) with the stand-in images, reused across sessions."""
    return _engines(FLEET_SIZE)


@pytest.fixture
def clean_fleet(fleet: list[Engine]) -> list[Engine]:
    """The fleet with every engine running and no containers."""
    return _cleaned(fleet)


@pytest.fixture(scope="session")
def fleet5() -> list[Engine]:
    """Five engines (host1..host5), for server rollouts of 3 and 5 servers."""
    return _engines(5)


@pytest.fixture
def clean_fleet5(fleet5: list[Engine]) -> list[Engine]:
    return _cleaned(fleet5)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., Standin]]:
    """A factory of agent stand-in processes under tmp_path (testbed/agentprobe.py); every process still
    running at the end is killed."""
    made: list[Standin] = []
    dc = f"dc{os.getpid()}-{random.randrange(10**6)}"  # agents of other runs on a reused address stay out

    def make(name: str, **kwargs: Any) -> Standin:
        agent = Standin(tmp_path, name, dc, **kwargs)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        if agent.running():
            agent.signal(signal.SIGKILL)
            agent.wait(5)
