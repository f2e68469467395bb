"""The rollout test's reading of member statuses: what tells a graceful leave from a stop."""

from __future__ import annotations

from tests.integration.consul_checks import Sampler


def test_a_graceful_leave_is_first_seen_leaving_or_left() -> None:
    sampler = Sampler({"host1": "127.0.0.1:8500", "host2": "127.0.0.2:8500"})
    for status in [1, 1, 2, 3, 4, 1]:  # alive, leaving, left, then its replacement missed probes
        sampler._saw("host2", "host1", status)
    assert sampler.first_departure("host1") == 2
    assert [status for _when, _who, status in sampler.changes["host1"]] == [1, 2, 3, 4, 1]


def test_a_stop_without_a_leave_is_first_seen_failed_by_whoever_saw_it_first() -> None:
    sampler = Sampler({"host1": "127.0.0.1:8500", "host2": "127.0.0.2:8500", "host3": "127.0.0.3:8500"})
    sampler._saw("host2", "host1", 1)
    sampler._saw("host3", "host1", 1)
    sampler._saw("host3", "host1", 4)  # host3 saw it failed before host2 saw it left
    sampler._saw("host2", "host1", 3)
    assert sampler.first_departure("host1") == 4
    assert sampler.first_departure("host2") is None  # never seen at all
