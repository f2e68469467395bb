"""One duration syntax for --interval, --prune-after and --since's relative form (reconciler/durations.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.durations import parse_duration, seconds_text
from reconciler.store import parse_since

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30), ("0.5", 0.5), ("500ms", 0.5), ("90s", 90), ("15m", 900), ("2h", 7200),
        ("1h30m", 5400), ("3d", 259200), ("1w", 604800), ("1.5h", 5400), (" 2H ", 7200),
    ],
)  # fmt: skip
def test_the_forms_every_option_takes(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5x", "-5s", "m", "1h-30m", "30 days", "1e3"])
def test_anything_else_is_an_error_naming_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected seconds \(30, 0\.5\) or amounts with units"):
        parse_duration(text)


def test_since_takes_the_same_ages_and_still_iso_times() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert parse_since("1h30m", now) == now - timedelta(minutes=90)
    assert parse_since("2w", now) == now - timedelta(weeks=2)
    assert parse_since("2026-12-01", now) == datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="1h30m"):
        parse_since("yesterday", now)


def test_seconds_text_writes_what_parse_reads() -> None:
    for seconds in (0.05, 30, 90, 5400, 86400 * 30):
        assert parse_duration(seconds_text(seconds)).total_seconds() == seconds
    assert seconds_text(5400) == "1h30m"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "run", "no-such-topology.yaml", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_run_names_the_option_whose_duration_is_wrong_before_starting_anything() -> None:
    bad = _run("--interval", "5x", "--http", "off")
    assert bad.returncode == 1 and "error: --interval: invalid duration '5x'" in bad.stderr
    prune = _run("--interval", "1m", "--prune-after", "30 days", "--http", "off")
    assert prune.returncode == 1 and "error: --prune-after: invalid duration '30 days'" in prune.stderr
    short = _run("--interval", "10ms", "--http", "off")
    assert short.returncode == 1 and "error: --interval 10ms: at least 0.05s" in short.stderr
