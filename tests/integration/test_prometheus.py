"""The Prometheus files shipped in monitoring/, checked by the real tools (Debian's prometheus package):
``promtool check rules`` and ``promtool test rules`` on the alert rules, and a real Prometheus server
scraping a controller that converges real engines, through whose HTTP API every dashboard query is
evaluated (each must return data, so that no panel is empty or misspelled) and every rule is loaded
and evaluated without error."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from testbed.controller_harness import ControllerProcess, stop_all, wait_for
from testbed.fleet import Engine, FleetError
from testbed.prometheus import PrometheusServer, start_prometheus, stop_prometheus
from tests.integration.harness import Fleet

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERT_TESTS = MONITORING / "alerts.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
METRIC_NAME = re.compile(r"\b(consul_reconciler_[a-z_]+|process_[a-z_]+|up)\b")
HISTOGRAM_OR_COUNTER = re.compile(r"_(bucket|sum|count|total|created)$")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=MONITORING)


def alert_names() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every target of every panel."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


def test_the_alert_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in done.stdout, done.stdout


def test_the_alert_rules_pass_their_promtool_unit_tests() -> None:
    done = promtool("test", "rules", str(ALERT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for name in alert_names():
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no case where it stays quiet"


def test_the_scrape_configuration_is_valid() -> None:
    done = promtool("check", "config", str(MONITORING / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def scraped(
    clean_fleet: list[Engine], tmp_path: Path
) -> Iterator[tuple[ControllerProcess, PrometheusServer]]:
    """A controller converging the fleet (a pass every 2 s), scraped every second by Prometheus
    with the project's alert rules loaded."""
    fleet = Fleet(clean_fleet, tmp_path, cluster="prom")
    log = tmp_path / "controller.log"
    ctl = ControllerProcess(fleet.file, fleet.db, log, "--interval", "2s", env=fleet.env)
    prometheus: PrometheusServer | None = None
    try:
        ctl.wait_ready()
        try:
            prometheus = start_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{ctl.port}"], [ALERTS])
        except FleetError as error:
            pytest.fail(f"Prometheus could not be brought up: {error}", pytrace=False)
        yield ctl, prometheus
    finally:
        if prometheus is not None:
            stop_prometheus(prometheus)
        stop_all([ctl])


def exposed_names(metrics_text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_prometheus_scrapes_the_controller_and_every_panel_and_rule_works(
    scraped: tuple[ControllerProcess, PrometheusServer],
) -> None:
    ctl, prometheus = scraped
    wait_for(
        lambda: [s["value"][1] for s in prometheus.query('up{job="consul-reconciler"}')] == ["1"],
        30,
        "Prometheus to scrape the controller",
    )
    metrics = ctl.get("/metrics")[1]
    lint = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    # every metric the rules and the dashboard name is one the controller exposes (or Prometheus's up)
    exposed = exposed_names(metrics) | {"up"}
    referenced = set(METRIC_NAME.findall(ALERTS.read_text()))
    for _, expr in dashboard_queries():
        referenced |= set(METRIC_NAME.findall(expr))
    assert referenced - exposed == set(), f"named but not exposed: {sorted(referenced - exposed)}"

    # enough scrapes for the rate() windows to hold two samples with passes between them
    time.sleep(5)
    empty: list[str] = []
    for title, expr in dashboard_queries():
        result = prometheus.query(expr)
        values = [series["value"][1] for series in result]
        if not values or any(v in ("NaN", "+Inf", "-Inf") for v in values):
            empty.append(f"{title}: {expr} -> {values}")
    assert empty == [], "panels without data:\n" + "\n".join(empty)

    # every rule loaded and evaluated against the real series without error; none fires on a
    # converged fleet
    def evaluated() -> list[dict[str, Any]]:
        groups = prometheus.api("rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    wait_for(lambda: all(r["lastEvaluation"] > "2000" for r in evaluated()), 10, "the rules evaluated")
    rules = evaluated()
    assert sorted(r["name"] for r in rules) == sorted(alert_names())
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    assert [r["name"] for r in rules if r["state"] == "firing"] == []
