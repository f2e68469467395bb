"""Consul versions in a rollout (pure): read from image tags, and what Consul's upgrade guide asks.

Consul's upgrade documentation (developer.hashicorp.com/consul/docs/upgrade): upgrade the servers one
at a time, then the clients, so no client runs a version newer than its servers; and "each upgrade
should jump at most 2 major versions" (1.12 -> 1.14, not 1.12 -> 1.15; Consul calls the second number
of 1.x the major version). Going back is not in the guide: a server's raft log and state written by a
newer version may not be readable by an older one, so a server downgrade is refused unless the
topology allows it (``rollout.allow_downgrade``).

A version is read from the image's tag (``hashicorp/consul:1.20``, ``...:1.14.11-ent``); an image
without one (``latest``, a digest) has none, and no rule applies to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple

from reconciler.plan import Action, Kind, Plan

SAFE_MAJOR_JUMP = 2  # "each upgrade should jump at most 2 major versions"
_TAG = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+].*)?$")


class Version(NamedTuple):
    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def image_version(image: str | None) -> Version | None:
    """The version an image's tag names, or None (no tag, ``latest``, only a digest)."""
    if not image:
        return None
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    found = _TAG.match(last.rsplit(":", 1)[1])
    if found is None:
        return None
    return Version(int(found.group(1)), int(found.group(2)), int(found.group(3) or 0))


@dataclass(frozen=True)
class Change:
    host: str
    old: Version
    new: Version


def _server_changes(actions: Iterable[Action]) -> list[Change]:
    changes = []
    for action in actions:
        if action.kind not in (Kind.REPLACE, Kind.ADOPT) or action.desired is None or action.observed is None:
            continue
        if action.desired.role != "server":
            continue
        old, new = image_version(action.observed.image), image_version(action.desired.image)
        if old is not None and new is not None and old != new:
            changes.append(Change(action.host, old, new))
    return changes


def check_versions(plan: Plan, *, allow_downgrade: bool) -> Plan:
    """The plan with a server downgrade refused (unless allowed) and a jump beyond Consul's
    documented step named in its warnings."""
    changes = _server_changes(plan.actions)
    warnings = list(plan.warnings)
    refused = plan.refused
    downgrades = [c for c in changes if c.new < c.old]
    if downgrades and not allow_downgrade and refused is None:
        listed = ", ".join(f"{c.host} {c.old} -> {c.new}" for c in downgrades)
        refused = (
            f"server downgrade refused ({listed}): a server may not read the state a newer version "
            "wrote; set rollout.allow_downgrade: true if this is intended"
        )
    for c in changes:
        jump = c.new.minor - c.old.minor if c.new.major == c.old.major else None
        if c.new > c.old and (jump is None or jump > SAFE_MAJOR_JUMP):
            warnings.append(
                f"{c.host}: Consul {c.old} -> {c.new} jumps more than {SAFE_MAJOR_JUMP} major versions "
                "at once; Consul's upgrade guide asks for intermediate steps"
            )
    return replace(plan, refused=refused, warnings=tuple(dict.fromkeys(warnings)))


def client_wait(action: Action, servers: Mapping[str, Version | None]) -> str | None:
    """Why a client change must wait: it would run a newer version than a server runs now."""
    if action.desired is None or action.desired.role != "client" or action.kind is Kind.REMOVE:
        return None
    target = image_version(action.desired.image)
    if target is None:
        return None
    behind = sorted(
        f"{node} ({version})" for node, version in servers.items() if version is not None and version < target
    )
    if not behind:
        return None
    return (
        f"the client would run Consul {target} while server(s) {', '.join(behind)} run an "
        "older version; clients go once every server runs it or newer"
    )
