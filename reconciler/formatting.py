"""How plans, specs and audit rows read for a person (pure text; the CLI prints it)."""

from __future__ import annotations

import json
import shlex
import textwrap
from typing import Any

from desired_state.secrets import REDACTED
from desired_state.spec import ContainerSpec
from reconciler.actual import ObservedHost
from reconciler.dangers import refusal
from reconciler.plan import Action, Change, Kind, Plan

SYMBOL = {
    Kind.CREATE: "+",
    Kind.REPLACE: "~",
    Kind.START: ">",
    Kind.REMOVE: "-",
    Kind.BLOCKED: "!",
    Kind.ADOPT: "~",
    Kind.ADOPT_IN_PLACE: "=",
}
WIDTH = 100  # an explanation of a dangerous change is wrapped at this width
# How a kind reads in a plan, where its value alone would not say enough
LABEL = {Kind.ADOPT: "adopt by replacement", Kind.ADOPT_IN_PLACE: "adopt in place"}


def docker_run_line(spec: ContainerSpec) -> str:
    """The ``docker run`` command a person would type for this spec (secrets redacted)."""
    argv = ["docker", "run", "-d", "--name", spec.name]
    if spec.network_mode == "host":
        argv.append("--net=host")
    else:
        argv.append(f"--net={spec.network_mode}")
        for port in spec.ports:
            argv += ["-p", port.record().removesuffix("/tcp")]
    for mount in (*spec.mounts, *spec.mounted_config):
        argv += ["-v", mount.record()]
    for key, value in spec.env:
        argv += ["-e", f"{key}={value}"]
    argv.append(f"--restart={spec.restart_policy}")
    argv.append(spec.image)
    argv += list(spec.command)
    line = shlex.join(argv)
    for config in spec.config_files:
        shown = config.content if config.shown else "(an operator's file, copied; " + config.record() + ")"
        line += f"\n# then, before start: {config.path} = {shown}"
    for secret in spec.secret_files:
        shown = json.dumps(secret.document(REDACTED))
        line += (
            f"\n# then, before start: {secret.path} = {shown}"
            f"  (value from {secret.ref.describe()}, written into the container, never on its command line)"
        )
    return line


def format_plan(plan: Plan, hosts: int | None = None) -> str:
    """The plan as `plan` and `apply` print it (``hosts``: how many the topology has, when known)."""
    lines: list[str] = []
    counts = plan.counts()
    summary = ", ".join(
        f"{n} to {LABEL.get(Kind(k), k)}" if k not in ("blocked",) else f"{n} blocked"
        for k, n in counts.items()
        if n
    )
    if plan.refused:
        lines += refusal_lines(plan)
    lines += [f"WARNING: {warning}" for warning in plan.warnings]
    lines += [f"acknowledged: {danger}" for danger in plan.dangers if danger.acknowledged]
    lines += [
        f"note: acknowledge {text!r} matches no change now; take it out once its change is done, or it "
        "lets the next such change through unasked"
        for text in plan.unused_acknowledgements
    ]
    if not plan.actions and not plan.unreachable and not plan.deferred:
        lines.append(f"cluster {plan.cluster}: nothing to do; every host matches the topology.")
        return "\n".join(lines)
    lines.append(f"cluster {plan.cluster}: {changes_line(plan, summary, hosts)}")
    current_host = None
    host_order: dict[str, int] = {}
    for action in plan.actions:
        host_order.setdefault(action.host, len(host_order))
    by_host = sorted(enumerate(plan.actions), key=lambda pair: (host_order[pair[1].host], pair[0]))
    for _, action in by_host:
        if action.host != current_host:
            current_host = action.host
            note = "  (no longer in the topology)" if action.host in plan.retired_hosts else ""
            lines.append(f"\nhost {action.host}{note}")
        lines.extend(format_action(action))
    for host, error in sorted(plan.unreachable.items()):
        lines.append(f"\nhost {host}\n  ? unreachable, nothing planned: {error}")
    return "\n".join(lines)


def changes_line(plan: Plan, counts: str, hosts: int | None = None) -> str:
    """What a plan or a pass changes, never a bare "no changes" when some host was not looked at:
    ``counts`` (e.g. "create 2"), then the hosts not observed (unreachable, or left alone while they
    back off), whose state is unknown. ``hosts``: how many the topology has, when known."""
    unseen = sorted(plan.unreachable)
    left = set(plan.deferred) - set(unseen)
    waiting = sorted(h for h in left if plan.deferred[h].startswith(BACKING_OFF))
    others = sorted(left - set(waiting))  # sharded: another controller's hosts (reconciler/shards.py)
    if counts:
        head = counts
    elif not unseen and not waiting:
        head = "no changes" if not others else "no changes on this controller's hosts"
    elif hosts is not None and len(unseen) + len(waiting) + len(others) >= hosts:
        head = "nothing observed, so nothing known"
    else:
        head = "no changes on the hosts observed"
    parts = [head]
    if unseen:
        parts.append(f"{_hosts(unseen)} unreachable, state unknown ({', '.join(unseen)})")
    if waiting:
        parts.append(f"{_hosts(waiting)} not tried while backing off, state unknown ({', '.join(waiting)})")
    if others:  # counted, not listed: two thirds of the fleet for each of three controllers
        parts.append(f"{_hosts(others)} left to other controllers")
    return "; ".join(parts)


BACKING_OFF = "backing off"  # how reconciler.assess.History.deferred's reasons begin


def counted(count: int, noun: str) -> str:
    """``1 host``, ``3 hosts``, ``0 clients``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _hosts(names: list[str]) -> str:
    return counted(len(names), "host")


def refusal_lines(plan: Plan) -> list[str]:
    """Why a plan is refused. Dangerous changes are listed one by one, each with the acknowledgement
    that lets it through (``Plan.refused`` says the same on one line, for the audit log)."""
    refused = plan.refused or ""
    dangers = [d for d in plan.dangers if not d.acknowledged]
    text = refusal(dangers)
    if text is None or not refused.endswith(text):
        return [f"REFUSED: {refused}"]
    lines = [f"REFUSED: {other}" for other in [refused[: -len(text)].removesuffix("; ")] if other]
    lines.append(f"REFUSED: {len(dangers)} dangerous change{'s' if len(dangers) > 1 else ''}, nothing done:")
    for danger in dangers:
        lines += textwrap.wrap(danger.explanation, WIDTH, initial_indent="  ! ", subsequent_indent="    ")
        lines.append(f"      acknowledge: {danger.acknowledgement}")
    wanted = ", ".join(d.acknowledgement for d in dangers)
    lines.append(f"  If this is intended, add to the document: acknowledge: [{wanted}]")
    return lines


def format_action(action: Action) -> list[str]:
    role = f" ({action.role})" if action.role else ""
    label = LABEL.get(action.kind, action.kind.value)
    head = f"  {SYMBOL[action.kind]} {label:<8} {action.name}{role}"
    if action.desired is not None and action.kind in (Kind.CREATE, Kind.ADOPT, Kind.ADOPT_IN_PLACE):
        head += f"  image {action.desired.image}"
    out = [head]
    for change in action.reasons:
        out.extend("      " + line for line in format_change(change))
    return out


def format_change(change: Change) -> list[str]:
    if change.field is None:
        return [change.message or ""]
    old, new = change.old, change.new
    if isinstance(old, list) and isinstance(new, list):
        removed = [x for x in old if x not in new]
        added = [x for x in new if x not in old]
        if removed or added:
            parts = [f"{change.field}:"]
            parts += [f"  - {x}" for x in removed]
            parts += [f"  + {x}" for x in added]
            return parts
        return [f"{change.field}: order changed: {_fmt(old)} -> {_fmt(new)}"]
    return [f"{change.field}: {_fmt(old)} -> {_fmt(new)}"]


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return "[" + " ".join(str(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns sized to their content; the last column is never cut or wrapped."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        head = "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells[:-1]))
        return f"{head}  {cells[-1]}".rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def host_report(cluster: str, host: str, plan: Plan, seen: ObservedHost | None) -> dict[str, Any]:
    """What `status` and the status documents in Consul KV both say of one host: whether it answered,
    our containers on it and their state, and what the plan would change there: ``drift`` is None
    (unknown) for a host that was not observed, never an empty list that would read "none"."""
    observed = seen is not None and seen.reachable and host not in plan.unreachable
    return {
        "reachable": seen.reachable if seen else None,
        "observed": {c.name: c.state for c in (seen.managed if seen else ()) if c.managed_by == cluster},
        "drift": [f"{a.kind.value} {a.name}" for a in plan.actions if a.host == host] if observed else None,
    }
