"""`import`: the topology of a cluster started by hand, read from the containers on its hosts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.cli.common import JsonOpt, emit_json, err, fail, out

if TYPE_CHECKING:
    from desired_state.handrun import FoundContainer
    from desired_state.load import Issue
    from desired_state.takeover import ImportResult

# Docker and the models are imported where they are used (reconciler/cli/common.py says why).

HostOpt = Annotated[
    list[str],
    typer.Option(
        "--host",
        metavar="NAME=DOCKER_URL",
        help="A host and its Docker endpoint (unix:///path, tcp://host:port, ssh://user@host); "
        "give one --host per host, in the order the topology should list them.",
        show_default=False,
    ),
]


def import_cmd(
    hosts: HostOpt,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the topology to FILE (default: print it).", show_default=False
        ),
    ] = None,
    cluster: Annotated[str, typer.Option("--cluster", help="The cluster id the topology gets.")] = "imported",
    allow_partial: Annotated[
        bool,
        typer.Option(
            "--allow-partial",
            help="Write the topology even when some containers or flags could not be mapped.",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds each engine may take.")] = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Write the topology of a Consul cluster started by hand (the blog recipe's `docker run` lines):
    the agents and Registrators on each host, read from their containers. What it changes to fit a
    topology it says (notes); what it cannot map it lists with host and container, and then exits 1
    unless --allow-partial. A gossip key becomes a reference to fill in; its value is never written.
    Then: `validate`, `plan`, `apply --adopt all`."""
    from desired_state.spec import Endpoint
    from desired_state.takeover import import_topology
    from reconciler.engines import Connections, EngineError
    from reconciler.observe import read_hand_run

    pairs = _host_pairs(hosts)
    found: list[FoundContainer] = []
    unreachable: list[str] = []
    connections = Connections()
    try:
        for name, url in pairs:
            try:
                found += read_hand_run(connections, name, Endpoint(url, timeout=timeout))
            except EngineError as exc:
                unreachable.append(str(exc))
    finally:
        connections.close()
    if unreachable:
        for line in unreachable:
            err.print(f"error: {line}", markup=False)
        fail(f"{len(unreachable)} of {len(pairs)} hosts could not be read; nothing written")
    result = import_topology(cluster, pairs, found)
    text = _document_text(result)
    problems = _validate(text)
    if as_json:
        emit_json({**result.to_dict(), "errors": [p.to_dict() for p in problems]})
    else:
        for note in result.notes:
            err.print(f"note: {note}", markup=False)
        for item in result.unmapped:
            err.print(f"not mapped: {item}", markup=False)
        for problem in problems:
            err.print(f"invalid: {problem}", markup=False)
    complete = not result.unmapped and not problems
    if complete or allow_partial:
        if output is not None:
            output.write_text(text, encoding="utf-8")
            if not as_json:
                err.print(f"wrote {output} ({len(result.document.get('hosts', []))} hosts)", markup=False)
        elif not as_json:
            out.print(text, end="", markup=False)
    if not complete:
        what = (
            f"{len(result.unmapped)} thing(s) could not be mapped" if result.unmapped else "invalid topology"
        )
        if allow_partial:
            err.print(f"warning: {what}; written anyway (--allow-partial)", markup=False)
        else:
            fail(f"{what}; nothing written (--allow-partial writes what could be mapped)")


def _host_pairs(hosts: list[str]) -> list[tuple[str, str]]:
    from desired_state.model import Host

    if not hosts:
        fail("no host given: --host NAME=DOCKER_URL, once per host")
    pairs: list[tuple[str, str]] = []
    for item in hosts:
        name, eq, url = item.partition("=")
        if not eq or not name or not url:
            fail(f"--host {item!r}: expected NAME=DOCKER_URL (e.g. node1=tcp://10.0.0.1:2376)")
        try:
            plain = {"tls": False} if url.startswith("tcp://") else {}  # how import reads it
            Host.model_validate(
                {"name": name, "docker": url, "advertise": "127.0.0.1", "role": "client", **plain}
            )
        except ValueError as exc:
            first = str(exc).splitlines()
            fail(f"--host {item!r}: {first[-1].strip() if first else exc}")
        if name in {n for n, _ in pairs}:
            fail(f"--host {name}: given twice")
        pairs.append((name, url))
    return pairs


def _document_text(result: ImportResult) -> str:
    head = ["# Imported by `consul-reconciler import` from the containers running on each host."]
    head += [f"# note: {line}" for note in result.notes for line in _wrap(note)]
    head += [f"# not mapped: {line}" for item in result.unmapped for line in _wrap(str(item))]
    import yaml

    body = yaml.safe_dump(result.document, sort_keys=False, default_flow_style=False)
    return "\n".join(head) + "\n" + body


def _wrap(text: str, width: int = 96) -> list[str]:
    lines: list[str] = []
    words = text.split()
    current = ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = "  " + word
        else:
            current = f"{current} {word}" if current else word
    return lines + ([current] if current else [])


def _validate(text: str) -> list[Issue]:
    from desired_state.load import TopologyError, load_topology

    try:
        load_topology(text.encode(), source="import", fmt="yaml")
    except TopologyError as exc:
        return list(exc.issues)
    return []
