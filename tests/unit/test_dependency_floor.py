"""The suite runs on the lowest versions pyproject.toml allows (constraints-floor.txt, installed by
scripts/bootstrap.sh): each pin is the declared floor, and it is what is installed."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "constraints-floor.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[name.strip()] = pinned.strip()
    return pins


def test_each_pin_is_the_declared_floor_and_is_installed() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for requirement in declared:
        match = re.match(r"([A-Za-z0-9_.\-\[\]]+?)(\[.*\])?\s*>=\s*([0-9][0-9.]*)", requirement)
        if match:
            floors[match.group(1)] = match.group(3)
    pins = _pins()
    assert pins, "constraints-floor.txt pins nothing"
    for name, pinned in pins.items():
        assert name in floors, f"{name} is pinned but pyproject.toml declares no floor for it"
        assert [int(x) for x in pinned.split(".")][: len(floors[name].split("."))] == [
            int(x) for x in floors[name].split(".")
        ], f"{name}: pinned {pinned}, declared floor {floors[name]}"
        assert version(name) == pinned, f"{name} {version(name)} is installed, not the floor {pinned}"
