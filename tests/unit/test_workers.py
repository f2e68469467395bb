"""testbed/workers.py: each xdist worker gets folders, addresses and a port no other worker uses."""

from __future__ import annotations

import pytest

from testbed.workers import WorkerError, worker_environment


def test_the_first_worker_and_a_run_without_workers_keep_the_defaults() -> None:
    assert worker_environment("gw0", {}) == {}
    assert worker_environment("", {"CR_FLEET_NET": "127.0.20"}) == {}


def test_each_later_worker_gets_its_own_folders_net_and_port() -> None:
    assert worker_environment("gw1", {}) == {
        "CR_FLEET_ROOT": "/tmp/crfleet-gw1",
        "CR_TLS_ROOT": "/tmp/crtls-gw1",
        "CR_PG_ROOT": "/tmp/crpg-gw1",
        "CR_FLEET_NET": "127.0.11",
        "CR_PG_PORT": "25433",
    }
    given = {"CR_FLEET_ROOT": "/tmp/mine", "CR_FLEET_NET": "127.0.20", "CR_PG_PORT": "6000"}
    second = worker_environment("gw2", given)
    assert (second["CR_FLEET_ROOT"], second["CR_FLEET_NET"], second["CR_PG_PORT"]) == (
        "/tmp/mine-gw2",
        "127.0.22",
        "6002",
    )


def test_no_room_left_on_loopback_is_an_error_naming_the_variable() -> None:
    with pytest.raises(WorkerError, match=r"CR_FLEET_NET=127\.0\.255"):
        worker_environment("gw1", {"CR_FLEET_NET": "127.0.255"})
