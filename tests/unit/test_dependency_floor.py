"""The suite runs on the lowest versions pyproject.toml allows (constraints-floor.txt, installed by
scripts/bootstrap.sh): each pin is the declared floor, and it is what is installed."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import distribution, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def _image_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[canonicalize_name(name)] = pinned.strip()
    return pins


def test_every_runtime_dependency_is_pinned_for_the_image_within_the_declared_range() -> None:
    """constraints.txt pins the whole runtime closure (what the image installs), each pin inside the
    range pyproject.toml declares, and the test command installed those very versions."""
    pins = _image_pins()
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in declared["dependencies"]]
    requirements += [Requirement(r) for r in declared["optional-dependencies"]["postgres"]]
    seen: set[str] = set()
    while requirements:
        req = requirements.pop()
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        assert name in pins, f"{req.name} (needed at run time) is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req}"
        if name in seen:
            continue
        seen.add(name)
        assert version(name) == pins[name], f"{name} {version(name)} is installed, not {pins[name]}"
        for extra in req.extras or {""}:
            for text in distribution(name).requires or []:
                child = Requirement(text)
                if child.marker is None or child.marker.evaluate({"extra": extra}):
                    requirements.append(Requirement(str(child).split(";")[0]))
    assert seen == set(pins), f"pinned but not needed: {sorted(set(pins) - seen)}"
