"""The running controller at 30 to 3,000 hosts, on simulated Docker engines (figures, not a test).

    python -m bench.simscale --hosts 30 100 300 1000 3000 [--markdown]

For each size N, bench/dockersim.py serves N virtual engines (one asyncio process, a unix socket
each) and ``consul-reconciler run`` runs as its own process against a topology of N hosts (5 servers,
the rest clients, Registrator on each), the document a local file, the audit log SQLite in a
temporary folder, ``--http`` on 127.0.0.1, a resync every 30 s. ``rollout.gates`` is off: no Consul
runs behind the simulated agents, so no health gate, leave or snapshot is measured. Then:

- converge from empty: the controller's start to every container running (the simulator's state);
- no-op pass: the topology file touched (same bytes), the pass's own duration from the controller's
  log ("pass: nothing new ... in N ms"), and the Docker requests it made (the simulator's counters;
  the event streams' ``GET /events`` left out);
- idle: resident memory, threads and descriptors once a second, CPU per minute over the window;
- one change: a new client image (``consul.client_image``, pulled on each client host) until every
  client runs it;
- event -> repair: a Registrator killed through the Docker API (the simulator's FinishedAt) to the
  controller's start of it (its StartedAt), and one removed (the destroy event's time) to its
  replacement's start: both times are the simulator's own.

Waits are capped (``--converge-timeout``); a size that does not converge says so instead of hanging.
The figures go to ``--json`` (docs/simscale.json); ``--markdown`` also draws docs/simscale.png and
writes the section "Thousands of hosts (simulated engines)" between the markers
``<!-- simscale:begin -->`` and ``<!-- simscale:end -->`` of BENCHMARKS.md, beside the 30 real
engines' figures of BENCHMARKS.json so that the simulator's bias shows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml

from bench.controllercost import _cpu_seconds, _rss_mb, _started_at
from bench.peers import VENV_BIN
from bench.report import SIMSCALE_BEGIN, SIMSCALE_END
from bench.scale import host_name, loopback
from bench.stats import Samples, machine
from reconciler.scope import SLICE_HOSTS
from testbed.controller_harness import die_with_parent, free_port

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = "simscale"
SERVERS = 5
IMAGE = "hashicorp/consul:1.20"
# Pullable, not present: the change pulls it on each client. The same Consul version as the servers':
# a newer one would wait for the servers first (reconciler/versions.py), and servers take no gates here.
NEW_CLIENT_IMAGE = "hashicorp/consul:1.20.0-rebuilt"
REGISTRATOR = "gliderlabs/registrator:latest"
INTERVAL = 30
# a full pass's line (a pass scoped to an event's host or a resync slice ends with "[... of N hosts]")
NOOP_LINE = re.compile(r"pass: nothing new, not recorded, in (\d+) ms \([^\n\[]*\)$", re.M)
SLICE_LINE = re.compile(
    r"pass: nothing new, not recorded, in (\d+) ms .*\[resync slice .* (\d+) of \d+ hosts\]$", re.M
)
PASS_LINE = re.compile(r" pass(?: \d+)?: ")  # every pass's last line, whatever it did
BEGIN, END = SIMSCALE_BEGIN, SIMSCALE_END  # bench/report.py keeps this section when it rewrites the file
GATES_NOTE = (
    "rollout.gates is off: no Consul runs behind the simulated server agents, so no health gate, "
    "graceful leave or raft snapshot is part of these figures"
)


class Stalled(Exception):
    """A wait ran past its cap: the figure is reported as not reached."""


@dataclass
class SizeResult:
    hosts: int
    converge_s: float | None = None
    change_s: float | None = None
    noop_ms: list[float] = field(default_factory=list)
    slice_ms: list[float] = field(default_factory=list)  # the resync's slice passes (past SLICE_HOSTS)
    requests_per_pass: list[int] = field(default_factory=list)
    request_kinds: dict[str, int] = field(default_factory=dict)
    kill_repair_ms: list[float] = field(default_factory=list)
    remove_repair_ms: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    threads: list[float] = field(default_factory=list)
    fds: list[float] = field(default_factory=list)
    cpu_s_per_min: list[float] = field(default_factory=list)
    simulator: dict[str, float] = field(default_factory=dict)
    load_average: list[float] = field(default_factory=list)  # the machine's, at the start and the end
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --------------------------------------------------------------------------------------------------
# The simulator and the controller as processes


class Simulated:
    """bench/dockersim.py serving ``hosts`` engines in ``folder``."""

    def __init__(self, hosts: int, folder: Path, latency: str) -> None:
        self.folder = folder
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.dockersim",
                "--hosts",
                str(hosts),
                "--dir",
                str(folder),
                "--latency",
                latency,
                "--images",
                IMAGE,
                REGISTRATOR,
                "--pullable",
                NEW_CLIENT_IMAGE,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], 120)
        line = self.proc.stdout.readline().decode() if readable else ""
        if not line.startswith("{"):
            raise Stalled(f"the simulator did not start: {line!r}")
        self.ready = json.loads(line)

    def url(self, index: int) -> str:
        return f"unix://{self.folder}/{host_name(index)}.sock"

    def control(self, method: str, path: str) -> Any:
        """A request to the control socket (plain HTTP over the unix socket)."""
        import http.client
        import socket

        class Unix(http.client.HTTPConnection):
            def connect(self_inner) -> None:
                self_inner.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self_inner.sock.connect(str(self.folder / "control.sock"))

        connection = Unix("sim", timeout=60)
        try:
            connection.request(method, path)
            body = connection.getresponse().read()
        finally:
            connection.close()
        return json.loads(body) if body else None

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.control("GET", "/state")
        return state

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def topology(sim: Simulated, hosts: int, client_image: str | None = None) -> dict[str, Any]:
    consul: dict[str, Any] = {"image": IMAGE}
    if client_image:
        consul["client_image"] = client_image
    return {
        "cluster": CLUSTER,
        "datacenter": "dc1",
        "consul": consul,
        "registrator": {"image": REGISTRATOR},
        "rollout": {"gates": False},
        "hosts": [
            {
                "name": host_name(i),
                "docker": sim.url(i),
                "advertise": loopback(i),
                "role": "server" if i < SERVERS else "client",
                "data_dir": "/data/consul",
                "timeout": 30,
            }
            for i in range(hosts)
        ],
    }


def write_document(path: Path, document: dict[str, Any]) -> None:
    """Written whole and renamed over the old one, as an editor saves."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(yaml.safe_dump(document, sort_keys=False))
    fresh.replace(path)


def raise_fds() -> None:
    die_with_parent()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_controller(workdir: Path, document: Path) -> subprocess.Popen[bytes]:
    argv = [
        str(VENV_BIN / "consul-reconciler"),
        "run",
        str(document),
        "--db",
        str(workdir / "audit.db"),
        "--http",
        f"127.0.0.1:{free_port()}",
        "--interval",
        str(INTERVAL),
        # killing and removing containers again and again is a crash loop by design
        "--crashloop-attempts",
        "1000000",
    ]
    log = (workdir / "controller.log").open("ab")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=raise_fds)


def wait(what: str, check: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes]) -> float:
    """Seconds until ``check``; Stalled past ``timeout`` or if the controller exits."""
    started = time.monotonic()
    while not check():
        if proc.poll() is not None:
            raise Stalled(f"the controller exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() - started > timeout:
            raise Stalled(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started


def converged(sim: Simulated, hosts: int, image: str | None = None, count: int = 0) -> Callable[[], bool]:
    def check() -> bool:
        state = sim.state()
        done = state["containers"] == 2 * hosts and state["running"] == 2 * hosts
        return done and (image is None or state["running_by_image"].get(image, 0) == count)

    return check


# --------------------------------------------------------------------------------------------------
# The figures


def noop_passes(sim: Simulated, document: Path, log: Path, proc: subprocess.Popen[bytes],
                result: SizeResult, trials: int, timeout: float) -> None:  # fmt: skip
    """Each trial waits for a quiet controller, then asks for one pass. The resync's slices go on
    meanwhile (one every interval/slices: a second apart at 3,000 hosts): the requests counted are the
    full pass's once each slice's hosts (its log line says how many) are taken off."""
    for _ in range(trials):
        quiet(sim, proc, timeout)
        before = count(PASS_LINE, log)
        slices_before = len(SLICE_LINE.findall(log.read_text(errors="replace")))
        noops = count(NOOP_LINE, log)
        sim.control("POST", "/counters/reset")
        os.utime(document)  # the same bytes: the file watcher asks for a pass, and it has nothing to do
        wait("a no-op pass", lambda noops=noops: count(NOOP_LINE, log) > noops, timeout, proc)  # type: ignore[misc]
        result.noop_ms.append(float(NOOP_LINE.findall(log.read_text(errors="replace"))[-1]))
        quiet(sim, proc, timeout)
        counts = sim.control("GET", "/counters")["by_route"]
        counts.pop("GET /events", None)
        sliced = SLICE_LINE.findall(log.read_text(errors="replace"))[slices_before:]
        if "GET /containers/json" in counts:
            counts["GET /containers/json"] -= sum(int(hosts) for _, hosts in sliced)
        passes = max(1, count(PASS_LINE, log) - before - len(sliced))
        result.requests_per_pass.append(round(sum(counts.values()) / passes))
        result.request_kinds = {route: round(n / passes) for route, n in counts.items()}


def count(pattern: re.Pattern[str], log: Path) -> int:
    return len(pattern.findall(log.read_text(errors="replace")))


def quiet(sim: Simulated, proc: subprocess.Popen[bytes], timeout: float, still: float = 0.5) -> None:
    """Until the controller has made no Docker request (event streams aside) for ``still`` seconds: no
    pass is running then (its log line comes only at its end, so the log cannot say). Short: at 3,000
    hosts a resync slice comes every second, and a longer silence never happens."""
    last = (-1, time.monotonic())

    def settled() -> bool:
        nonlocal last
        counts = sim.control("GET", "/counters")["by_route"]
        total = sum(n for route, n in counts.items() if route != "GET /events")
        if total != last[0]:
            last = (total, time.monotonic())
        return time.monotonic() - last[1] >= still

    wait("a quiet controller", settled, timeout, proc)


def idle(proc: subprocess.Popen[bytes], result: SizeResult, seconds: float) -> None:
    cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
    while time.monotonic() - t0 < seconds:
        result.rss_mb.append(_rss_mb(proc.pid))
        status = Path(f"/proc/{proc.pid}/status").read_text()
        result.threads.append(float(re.search(r"Threads:\s+(\d+)", status).group(1)))  # type: ignore[union-attr]
        result.fds.append(float(len(os.listdir(f"/proc/{proc.pid}/fd"))))
        time.sleep(1.0)
    result.cpu_s_per_min.append((_cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) * 60)


def repairs(
    sim: Simulated, hosts: int, proc: subprocess.Popen[bytes], result: SizeResult, trials: int, timeout: float
) -> None:
    for trial in range(trials):
        index = SERVERS + (trial * 7919) % max(1, hosts - SERVERS) if hosts > SERVERS else trial % hosts
        with contextlib.closing(docker.DockerClient(base_url=sim.url(index), version="1.41")) as client:
            result.kill_repair_ms.append(kill_repair(client, proc, timeout))
            time.sleep(1.0)
            result.remove_repair_ms.append(remove_repair(client, proc, timeout))
            time.sleep(1.0)


def kill_repair(client: docker.DockerClient, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Killed through the API -> started again by the controller, in the simulator's times (ms)."""
    client.api.kill("registrator")
    finished = client.api.inspect_container("registrator")["State"]["FinishedAt"]

    def started() -> bool:
        state = client.api.inspect_container("registrator")["State"]
        return bool(state["Running"]) and _started_at(state["StartedAt"]) > _started_at(finished)

    wait("a killed Registrator started again", started, timeout, proc)
    state = client.api.inspect_container("registrator")["State"]
    return (_started_at(state["StartedAt"]) - _started_at(finished)) * 1e3


def remove_repair(client: docker.DockerClient, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Removed through the API (``rm -f``) -> its replacement started, in the simulator's times (ms)."""
    old = client.api.inspect_container("registrator")["Id"]
    before = time.time() - 1
    client.api.remove_container(old, force=True)
    [destroyed] = list(
        client.api.events(
            since=before, until=time.time() + 0.5, decode=True, filters={"container": old, "event": "destroy"}
        )
    )

    def replaced() -> bool:
        try:
            state = client.api.inspect_container("registrator")
        except docker.errors.NotFound:
            return False
        return state["Id"] != old and bool(state["State"]["Running"])

    wait("a removed Registrator replaced", replaced, timeout, proc)
    started = _started_at(client.api.inspect_container("registrator")["State"]["StartedAt"])
    return (started - float(destroyed["timeNano"]) / 1e9) * 1e3


def measure(hosts: int, args: argparse.Namespace, log: Callable[[str], None]) -> SizeResult:
    result = SizeResult(hosts, load_average=[os.getloadavg()[0]])
    workdir = Path(tempfile.mkdtemp(prefix=f"simscale-{hosts}-"))
    sim = Simulated(hosts, workdir / "sim", args.latency)
    document = workdir / "topology.yaml"
    write_document(document, topology(sim, hosts))
    proc = start_controller(workdir, document)
    cap = args.converge_timeout
    try:
        result.converge_s = wait("convergence from empty", converged(sim, hosts), cap, proc)
        log(f"  converged {hosts} hosts in {result.converge_s:.1f} s")
        time.sleep(min(10.0, 2.0 + hosts / 300))  # the follow-up pass; the event streams connected
        noop_passes(sim, document, workdir / "controller.log", proc, result, args.trials, cap)
        log(
            f"  no-op pass {Samples.of('ms', result.noop_ms).text()}, {result.requests_per_pass[-1]} requests"
        )
        idle(proc, result, args.idle_seconds)
        log_text = (workdir / "controller.log").read_text(errors="replace")
        result.slice_ms = [float(ms) for ms, _ in SLICE_LINE.findall(log_text)]
        log(
            f"  idle: RSS {max(result.rss_mb):.0f} MB, {result.threads[-1]:.0f} threads, "
            f"{result.fds[-1]:.0f} fds, {result.cpu_s_per_min[-1]:.1f} CPU s/min"
        )
        write_document(document, topology(sim, hosts, NEW_CLIENT_IMAGE))
        clients = max(0, hosts - SERVERS)
        result.change_s = wait("the change", converged(sim, hosts, NEW_CLIENT_IMAGE, clients), cap, proc)
        log(f"  change ({clients} clients on a new image) in {result.change_s:.1f} s")
        time.sleep(2.0)
        repairs(sim, hosts, proc, result, args.repairs, min(cap, 120))
        log(
            f"  kill -> started again {Samples.of('ms', result.kill_repair_ms).text()}; "
            f"removed -> replaced {Samples.of('ms', result.remove_repair_ms).text()}"
        )
    except Stalled as exc:
        result.notes.append(f"did not complete: {exc}")
        log(f"  {hosts} hosts: {exc}")
    finally:
        stop(proc)
        result.simulator = sim.state()["process"]
        result.load_average.append(os.getloadavg()[0])
        sim.stop()
        result.notes += tail_errors(workdir / "controller.log")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail_errors(log: Path, limit: int = 3) -> list[str]:
    """The controller's first few ERROR lines, if any (a figure with errors behind it is suspect)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]
    return [f"controller log: {line[:300]}" for line in lines[:limit]]


# --------------------------------------------------------------------------------------------------
# Report


FIGURES: dict[str, tuple[str, str]] = {  # key -> (title, unit)
    "converge_s": ("converge from empty", "s"),
    "noop_ms": ("no-op pass (the controller's log)", "ms"),
    "slice_ms": (f"a resync slice's no-op pass (~{SLICE_HOSTS} hosts and the servers')", "ms"),
    "requests_per_pass": ("Docker requests per no-op pass", "requests"),
    "change_s": ("one change: every client on a new image", "s"),
    "kill_repair_ms": ("Registrator killed -> started again", "ms"),
    "remove_repair_ms": ("Registrator removed -> replacement started", "ms"),
    "rss_mb": ("idle resident memory", "MB"),
    "threads": ("threads", "threads"),
    "fds": ("open descriptors", "fds"),
    "cpu_s_per_min": ("idle CPU per minute (resync every 30 s)", "CPU s"),
}


def figure(size: dict[str, Any], key: str) -> Samples | None:
    value = size.get(key)
    values = value if isinstance(value, list) else ([value] if value is not None else [])
    return Samples.of(FIGURES[key][1], [float(v) for v in values]) if values else None


def real_figures(benchmarks: Path) -> dict[str, Samples]:
    """The 30 real engines' figures of BENCHMARKS.json that match ours."""
    if not benchmarks.exists():
        return {}
    data = json.loads(benchmarks.read_text())
    found: dict[str, Samples] = {}
    controller = data.get("controller") or {}
    if controller.get("hosts") == 30:
        found["converge_s"] = Samples.of("s", [controller["startup_converge_s"]])
        found["remove_repair_ms"] = Samples.of("ms", controller["detection_ms"])
        found["rss_mb"] = Samples.of("MB", controller["rss_mb"])
        found["cpu_s_per_min"] = Samples.of("CPU s", [c / 60 for c in controller["cpu_s_per_hour"]])
    for size in data.get("fleet") or []:
        if size["hosts"] == 30:
            found["noop_ms"] = Samples.of("ms", size["pass_ms"])
            found["requests_per_pass"] = Samples.of("requests", [30 * n for n in size["calls_per_host"]])
            found["change_s"] = Samples.of("s", size["seconds"]["ours"]["change"])
    return found


def before_table(results: dict[str, Any], before: dict[str, Any]) -> list[str]:
    """Each figure of an earlier run beside this one's, size by size: "before -> now" (medians)."""
    then = {s["hosts"]: s for s in before["sizes"]}
    sizes = [s for s in results["sizes"] if s["hosts"] in then]
    if not sizes:
        return []
    header = ["figure (median)", *[f"{s['hosts']:,} hosts" for s in sizes]]
    rows = []
    for key, (title, _unit) in FIGURES.items():
        cells = []
        for size in sizes:
            old, new = figure(then[size["hosts"]], key), figure(size, key)
            if key not in then[size["hosts"]] and new is not None:  # a figure the earlier run lacked
                cells.append(f"(new) {_median(new)}")
            elif old is not None and new is not None and old.median:
                cells.append(f"{_median(old)} -> {_median(new)} (x{new.median / old.median:.2g})")
            else:
                cells.append(f"{_median(old)} -> {_median(new)}")
        rows.append([title, *cells])
    return [
        "",
        f"### Before and after: commit {before['commit']} ({before['started']}) -> "
        f"commit {results['commit']}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
    ]


def _median(samples: Samples | None) -> str:
    return "not reached" if samples is None else samples.text().split(" (")[0]


def markdown(
    results: dict[str, Any], real: dict[str, Samples], chart: str, before: dict[str, Any] | None = None
) -> str:
    sizes = results["sizes"]
    header = ["figure", *[f"{s['hosts']:,} hosts" for s in sizes], "30 real engines (BENCHMARKS.json)"]
    rows = []
    for key, (title, _unit) in FIGURES.items():
        cells = [_cell(figure(s, key)) for s in sizes]
        rows.append([title, *cells, _cell(real.get(key), missing="not measured")])
    lines = [
        "## Thousands of hosts (simulated engines)",
        "",
        f"Generated by `{results['command']}`, code at commit {results['commit']}, "
        f"{results['started']}; machine: {results['machine']['cpu']}, {results['machine']['memory']} "
        "(shared with other work while it ran). Each size: bench/dockersim.py, a Docker Engine API "
        "simulator (a measuring instrument, checked against a real engine by "
        "tests/integration/test_dockersim_contract.py), serves N engines from one process, and "
        "`consul-reconciler run` runs against them as its own process (5 servers, the rest clients, "
        f"Registrator on each; resync every {INTERVAL} s; SQLite audit). "
        f"Note: {GATES_NOTE}. "
        "The simulator answers in microseconds and shares the machine's 2 cores with the controller: "
        "beside the 30 real engines' figures it shows its bias (no Docker work: the times here are the "
        "controller's own).",
        "",
        f"![the controller's figures by fleet size]({chart})",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        "Simulator process at the end of each size (the instrument's own cost): "
        + "; ".join(f"{s['hosts']:,} hosts {s['simulator'].get('rss_mb', 0):.0f} MB" for s in sizes)
        + ". The machine's load average (1 min) at the start and end of each size: "
        + "; ".join(
            f"{s['hosts']:,} hosts " + " / ".join(f"{x:.1f}" for x in s.get("load_average", []))
            for s in sizes
        )
        + " (2 cores; other work shared them).",
    ]
    if before is not None:
        lines += before_table(results, before)
    if results.get("analysis"):  # written by hand for the figures of one run (kept in the JSON)
        lines += ["", "### Where the cost goes", "", *results["analysis"]]
    if before is not None and before.get("analysis"):
        lines += ["", f"### Where the cost went at commit {before['commit']}", "", *before["analysis"]]
    lines += ["", "Notes:"]
    for size in sizes:
        for note in size["notes"]:
            lines.append(f"- {size['hosts']:,} hosts: {note}")
        if size.get("request_kinds"):
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(size["request_kinds"].items()))
            lines.append(f"- {size['hosts']:,} hosts, the last no-op pass's requests: {kinds}")
    return "\n".join(lines) + "\n"


def _cell(samples: Samples | None, missing: str = "not reached") -> str:
    return samples.text() if samples is not None else missing


def draw(
    results: dict[str, Any], real: dict[str, Samples], path: Path, before: dict[str, Any] | None = None
) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results["sizes"]
    fig, axes = plt.subplots(3, 4, figsize=(18, 11))
    for spare in axes.flat[len(FIGURES) :]:
        spare.set_visible(False)
    for ax, (key, (title, unit)) in zip(axes.flat, FIGURES.items(), strict=False):
        points = [(s["hosts"], f) for s in sizes if (f := figure(s, key)) is not None]
        if points:
            ax.errorbar(
                [n for n, _ in points],
                [f.median for _, f in points],
                yerr=[[f.median - f.min for _, f in points], [f.max - f.median for _, f in points]],
                marker="o",
                capsize=3,
                label="simulated engines",
            )
        earlier = [(s["hosts"], f) for s in (before or {}).get("sizes", []) if (f := figure(s, key))]
        if earlier:
            ax.plot(
                [n for n, _ in earlier],
                [f.median for _, f in earlier],
                marker=".",
                color="grey",
                linestyle="--",
                label=f"before (commit {before['commit']})" if before else "before",
            )
        if key in real:
            ax.plot(
                [30], [real[key].median], marker="s", color="C3", linestyle="none", label="30 real engines"
            )
        ax.set_title(title, fontsize=10)
        ax.set_xscale("log")
        ax.set_xlabel("hosts")
        ax.set_ylabel(unit)
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(
        f"consul-reconciler run on simulated Docker engines, commit {results['commit']} (medians, min..max)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def paste(section: str, benchmarks_md: Path) -> None:
    """The section between the markers of BENCHMARKS.md (added at the end the first time)."""
    text = benchmarks_md.read_text()
    block = f"{BEGIN}\n{section}{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    benchmarks_md.write_text(text)


def commit() -> str:
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "reconciler"], cwd=ROOT, capture_output=True, text=True
    )
    return found.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simscale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[30, 100, 300, 1000, 3000])
    parser.add_argument("--trials", type=int, default=5, help="no-op passes per size")
    parser.add_argument("--repairs", type=int, default=3, help="kills and removals per size")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--latency", default="0", help="the simulator's added latency per call (2ms)")
    parser.add_argument("--converge-timeout", type=float, default=600.0, help="cap of each wait (s)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "simscale.json")
    parser.add_argument("--markdown", action="store_true", help="also the chart and BENCHMARKS.md's section")
    parser.add_argument("--from-json", action="store_true", help="only render --json again (no measuring)")
    parser.add_argument("--keep", action="store_true", help="keep each size's folder (logs, audit.db)")
    parser.add_argument(
        "--before",
        type=Path,
        default=ROOT / "docs" / "simscale-before.json",
        help="an earlier run's JSON, shown beside this one (table and chart) when the file exists",
    )
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(f"{datetime.now(UTC):%H:%M:%S} {line}", flush=True)

    if args.from_json:
        results = json.loads(args.json.read_text())
    else:
        results = {
            "command": "python -m bench.simscale " + " ".join(argv if argv is not None else sys.argv[1:]),
            "commit": commit(),
            "started": f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}",
            "machine": machine(),
            "settings": {"interval_s": INTERVAL, "latency": args.latency, "gates": False, "note": GATES_NOTE},
            "sizes": [],
        }
        log(GATES_NOTE)
        for hosts in args.hosts:
            log(f"{hosts} hosts")
            results["sizes"].append(measure(hosts, args, log).as_json())
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps(results, indent=1) + "\n"
            )  # after each size: a partial run counts
    if args.markdown:
        real = real_figures(ROOT / "BENCHMARKS.json")
        chart = args.json.with_suffix(".png")
        before = json.loads(args.before.read_text()) if args.before.exists() else None
        drawn = draw(results, real, chart, before)
        section = markdown(results, real, os.path.relpath(chart, ROOT) if drawn else "", before)
        paste(section, ROOT / "BENCHMARKS.md")
        log(f"wrote {args.json.name}, {chart.name if drawn else '(no chart: no matplotlib)'}, BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
