"""The benchmark report's arithmetic (no timing is asserted: these are synthetic figures)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.report import markdown, targets
from bench.stats import Samples, ratio


def test_samples_summarise_median_min_max() -> None:
    s = Samples.of("s", [3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.min, s.max) == (2.5, 1.0, 10.0)
    assert s.text() == "2.50 s (1.00..10.00, n=4)"
    with pytest.raises(ValueError):
        Samples.of("s", [])


def test_ratio_is_peer_over_ours() -> None:
    assert ratio(Samples.of("s", [10.0]), Samples.of("s", [0.5])) == 20.0


def _results(ansible_converge: float, calls: list[int]) -> dict[str, Any]:
    return {
        "fleet": [
            {
                "hosts": 30,
                "seconds": {
                    "compose": {"converge": [9.0], "noop": [8.0, 9.0, 10.0], "change": [9.0]},
                    "ansible": {"converge": [ansible_converge], "noop": [20.0], "change": [20.0]},
                    "ours": {"converge": [4.0], "noop": [0.5], "change": [3.0]},
                },
                "pass_ms": [30.0, 40.0, 50.0],
                "calls_per_host": calls,
                "request_kinds": ["GET /containers/json"],
            }
        ],
        "controller": {
            "hosts": 30,
            "interval": 30,
            "window_seconds": 60,
            "rss_mb": [70.0, 71.0],
            "cpu_s_per_hour": [10.0],
            "detection_ms": [100.0],
            "startup_converge_s": 4.0,
        },
    }


def test_targets_met_and_missed_follow_the_figures() -> None:
    rows = {target: met for target, _, met in targets(_results(ansible_converge=30.0, calls=[1] * 30))}
    # no-op: compose 9 s / pass 40 ms = 225x (met); / apply 0.5 s = 18x (missed)
    assert rows["no-op at 30 hosts >= 20x faster than compose"] == "met (pass); **missed** (`apply`)"
    assert rows["exactly one Docker list call per host per no-op pass"] == "met"
    assert rows["converge from empty at 30 hosts >= 5x faster than Ansible (forks=5)"] == "met"
    assert rows["controller idle RSS < 100 MB at 30 hosts"] == "met"

    rows = {target: met for target, _, met in targets(_results(ansible_converge=19.0, calls=[1] * 29 + [2]))}
    assert rows["exactly one Docker list call per host per no-op pass"] == "**missed**"
    assert rows["converge from empty at 30 hosts >= 5x faster than Ansible (forks=5)"] == "**missed**"


def test_markdown_says_what_has_no_figure() -> None:
    results = _results(ansible_converge=30.0, calls=[1] * 30)
    results["fleet"][0]["seconds"]["shell"] = {"converge": [2.0], "noop": [], "change": [1.0]}
    text = markdown(results, "chart.png")
    assert "N/A: `docker run` again fails on the names" in text
    assert "N/A: a shell loop, compose or a playbook repairs nothing until someone runs it again" in text
    assert "ours 2.0x slower" in text  # shell converge 2 s vs ours 4 s
    assert "![converge, no-op and change times by fleet size](chart.png)" in text


def test_reading_says_when_the_shared_cpu_was_the_bound() -> None:
    import os

    cores = os.cpu_count() or 1
    results = _results(ansible_converge=30.0, calls=[1] * 30)
    size = results["fleet"][0]
    size["own_cpu_s"] = {"ours": {"converge": [1.0], "noop": [0.4], "change": [0.2]}}
    # converge: 4 s wall on a fully busy machine; change: 3 s wall with the machine mostly idle
    size["machine_cpu_s"] = {"ours": {"converge": [4.0 * cores], "noop": [0.5], "change": [0.3 * cores]}}
    results["startup_s"] = [0.4, 0.41, 0.39]
    text = markdown(results, "chart.png")
    converge = next(line for line in text.splitlines() if line.startswith("- **ours, converge"))
    change = next(line for line in text.splitlines() if line.startswith("- **ours, one change"))
    assert "100% busy" in converge and "the bound here is the CPU every engine shares" in converge
    assert "10% busy" in change and "the bound here" not in change
    assert "0.400 s (0.390..0.410, n=3) on its own" in text and "80% of the no-op `apply`" in text
