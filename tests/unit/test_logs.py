"""Log lines: the date and UTC in text, the run, host, container and kind as JSON fields."""

from __future__ import annotations

import json
import logging
import time

import pytest

from reconciler.logs import JsonFormatter, TextFormatter


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "consul_reconciler.x", logging.WARNING, __file__, 1, "replace %s", ("h1",), None
    )
    record.created = 1796204510.25  # 2026-12-02T09:41:50.250Z
    record.__dict__.update(extra)
    return record


def test_a_text_line_carries_the_date_and_utc_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        line = TextFormatter().format(_record())
    finally:
        monkeypatch.undo()
        time.tzset()
    assert line == "2026-12-02T09:41:50Z WARNING replace h1"


def test_a_json_line_carries_run_host_container_and_kind_as_fields() -> None:
    data = json.loads(JsonFormatter().format(_record(run=42, host="h1", container="consul", kind="replace")))
    assert data == {
        "time": "2026-12-02T09:41:50.250+00:00",
        "level": "warning",
        "logger": "consul_reconciler.x",
        "message": "replace h1",
        "run": 42,
        "host": "h1",
        "container": "consul",
        "kind": "replace",
    }
