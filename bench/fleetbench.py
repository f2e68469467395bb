"""Side by side on real engines: converge from empty, no-op and one change, for every tool.

For each fleet size N (the first N engines under /tmp/crbench, one Consul agent and one
Registrator each: host1 runs the server, the others clients) and each trial, every tool in turn
(the order rotates per trial, so drift in the machine's load is spread over all of them):

1. all containers are removed (not timed);
2. converge from empty: the tool's converge command, timed from process start to exit;
3. no-op: the same command again (ours: ``apply`` as a process, and the controller's pass
   in-process, with its Docker API requests counted per host);
4. one change: a new client image on every client host, the tool's command timed until it exits.

After every timed step every host is checked (not timed): the expected containers exist, run, and
have the expected image. A tool that leaves the fleet wrong fails the benchmark rather than
producing a figure.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench import peers
from bench.request_count import RequestCounter
from desired_state.load import load_topology
from desired_state.model import Topology
from desired_state.render import render
from desired_state.spec import DesiredFleet
from reconciler.engines import Connections
from reconciler.one_pass import PassOptions, run_pass
from reconciler.store import AuditLog
from testbed.fleet import STANDIN_CONSUL_1, STANDIN_CONSUL_2, Engine, fleet_topology, reset_engines

SCENARIOS = ("converge", "noop", "change")
CLUSTER = "bench"


@dataclass
class SizeResult:
    """Everything measured at one fleet size."""

    hosts: int
    seconds: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # tool -> scenario -> s
    # CPU seconds per step: the tool's own processes, and the whole machine (engines included)
    own_cpu_s: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    machine_cpu_s: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    pass_ms: list[float] = field(default_factory=list)  # ours, in-process no-op pass
    calls_per_host: list[int] = field(default_factory=list)  # ours, Docker requests per host per pass
    request_kinds: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "hosts": self.hosts,
            "seconds": self.seconds,
            "own_cpu_s": self.own_cpu_s,
            "machine_cpu_s": self.machine_cpu_s,
            "pass_ms": self.pass_ms,
            "calls_per_host": self.calls_per_host,
            "request_kinds": self.request_kinds,
        }


def topologies(engines: Sequence[Engine], data_root: Path) -> tuple[dict[str, object], dict[str, object]]:
    """The topology before and after the change (every client agent on a new image)."""
    # busybox agents without gates: the peers (a docker run loop, compose, Ansible) have none either,
    # and the figures are of the Docker work
    before = fleet_topology(
        engines, data_root, CLUSTER, servers=1, consul_image=STANDIN_CONSUL_1, gates=False
    )
    after = copy.deepcopy(before)
    consul = after["consul"]
    assert isinstance(consul, dict)
    consul["client_image"] = STANDIN_CONSUL_2
    return before, after


def rendered(document: dict[str, object]) -> DesiredFleet:
    return render(Topology.model_validate(document))


def verify(tool: str, step: str, engines: Sequence[Engine], fleet: DesiredFleet) -> None:
    """Raise PeerError unless every host runs exactly the desired containers with their images."""
    by_name = {e.name: e for e in engines}
    problems: list[str] = []
    for host in fleet.hosts:
        with contextlib.closing(by_name[host.name].client()) as client:
            listed = client.api.containers(all=True)
        found = {name.lstrip("/"): c for c in listed for name in c["Names"]}
        for spec in host.specs:
            current = found.get(spec.name)
            if current is None:
                problems.append(f"{host.name}/{spec.name}: missing")
            elif current["State"] != "running" or current["Image"] != spec.image:
                problems.append(f"{host.name}/{spec.name}: {current['State']} {current['Image']}")
        if len(listed) != len(host.specs):
            problems.append(f"{host.name}: {len(listed)} containers, expected {len(host.specs)}")
    if problems:
        raise peers.PeerError(f"{tool} after {step}: " + "; ".join(problems[:8]))


def in_process_noop(
    document: dict[str, object], workdir: Path, repeats: int
) -> tuple[list[float], list[int], list[str]]:
    """The controller's no-op pass, as it runs every resync: duration and Docker requests per host."""

    loaded = load_topology(yaml.safe_dump(document).encode())
    audit = AuditLog(str(workdir / "pass-audit.db"))
    requests = RequestCounter()
    connections = Connections(on_request=requests)
    durations: list[float] = []
    per_host: list[int] = []
    try:
        options = PassOptions()
        run_pass(loaded, source="bench", connections=connections, audit=audit, options=options)  # connect
        for _ in range(repeats):
            requests.reset()
            started = time.perf_counter()
            result = run_pass(loaded, source="bench", connections=connections, audit=audit, options=options)
            durations.append((time.perf_counter() - started) * 1e3)
            if not result.plan.is_noop:
                raise peers.PeerError(f"ours: the in-process pass planned actions: {result.plan.to_dict()}")
            per_host.extend(requests.total(h.name) for h in result.observed.hosts)
        kinds = requests.kinds()
    finally:
        connections.close()
        audit.close()
    return durations, per_host, kinds


def run_size(
    engines: Sequence[Engine],
    tools: Sequence[str],
    trials: int,
    workdir: Path,
    pass_repeats: int,
    log: Callable[[str], None],
) -> SizeResult:
    """All tools, all scenarios, ``trials`` times, on these engines."""
    size = len(engines)
    data_root = workdir / "data"
    before_doc, after_doc = topologies(engines, data_root)
    before, after = rendered(before_doc), rendered(after_doc)
    result = SizeResult(hosts=size)
    for trial in range(trials):
        order = list(tools[trial % len(tools) :]) + list(tools[: trial % len(tools)])
        for name in order:
            tool = make_tool(name, workdir / f"n{size}" / name)
            times = result.seconds.setdefault(name, {s: [] for s in SCENARIOS})

            def record(scenario: str, outcome: peers.Outcome, name: str = name) -> None:
                result.seconds[name][scenario].append(outcome.seconds)
                own = result.own_cpu_s.setdefault(name, {s: [] for s in SCENARIOS})
                own[scenario].append(outcome.own_cpu_s)
                busy = result.machine_cpu_s.setdefault(name, {s: [] for s in SCENARIOS})
                busy[scenario].append(outcome.machine_cpu_s)

            reset_engines(engines)
            if isinstance(tool, peers.Ours):
                tool.write_topology(before_doc)
            outcome = peers.run_step(name, tool.converge(before))
            verify(name, "converge", engines, before)
            record("converge", outcome)

            noop = tool.noop(before)
            if noop is not None:
                outcome = peers.run_step(name, noop)
                tool.check_noop(outcome)
                verify(name, "no-op", engines, before)
                record("noop", outcome)
            if isinstance(tool, peers.Ours):
                durations, calls, kinds = in_process_noop(before_doc, workdir, pass_repeats)
                result.pass_ms.extend(durations)
                result.calls_per_host.extend(calls)
                result.request_kinds = kinds
                tool.write_topology(after_doc)
            outcome = peers.run_step(name, tool.change(before, after))
            verify(name, "change", engines, after)
            record("change", outcome)
            log(
                f"  N={size:<3} trial {trial + 1}/{trials} {name:<12} "
                + "  ".join(f"{s} {times[s][-1]:.2f}s" for s in SCENARIOS if times[s])
            )
    reset_engines(engines)
    return result


def make_tool(name: str, workdir: Path) -> peers.Tool:
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "shell":
        return peers.ShellLoop(workdir)
    if name == "compose":
        return peers.Compose(workdir)
    if name == "ours":
        return peers.Ours(workdir)
    if name == "ansible":
        return peers.Ansible(workdir)
    if name.startswith("ansible-f") and name[len("ansible-f") :].isdigit():
        return peers.Ansible(workdir, forks=int(name[len("ansible-f") :]))
    raise ValueError(f"unknown tool {name!r} (shell, compose, ansible, ansible-fN, ours)")
