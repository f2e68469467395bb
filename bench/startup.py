"""The command line's start-up as whole processes, and a new 10,000-host document from parse to plan
(figures, not a test).

    .venv/bin/python -m bench.startup [--runs 9] [--docker-host unix:///...] [--hosts 10000] [--json]

1. Start-up: each command run as a new process, as a user runs it, wall clock from the start to the
   exit (and its CPU seconds, less disturbed by a busy machine), median (min..max, n) over ``runs``
   runs, every command taking its turn in each round so a change in the machine's load touches them
   all alike: ``--help``, ``plan --help``, ``--version``, and ``plan``, ``apply`` (nothing to do) and
   ``status`` of a one-host topology on the engine at ``--docker-host`` (converged first by one
   ``apply``; without an engine the host is unreachable and the commands still do all their start-up
   and a pass). Beside them, measured in the same rounds: ``python -c pass`` (the interpreter's own
   floor) and ``python -c "import reconciler.cli"``, and what a Docker user waits for:
   ``docker-compose version``/``docker compose version`` and ``docker version --format`` when they
   are installed (against the same engine). Our modules are byte-compiled first, as ``pip install``
   leaves them (with $PYTHONDONTWRITEBYTECODE set and no compiled files, every process would compile
   them again).

2. A new document of ``hosts`` hosts (bench/scale.py's, 5 servers), YAML and JSON, from its bytes to
   the plan against a drifted fleet, as a fresh document takes it (``load_topology``, ``render``,
   ``make_plan``), each step timed, ``trials`` times in this process.
"""

from __future__ import annotations

import argparse
import compileall
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import Samples

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = """cluster: startup-bench
consul: {{image: "consul-reconciler-standin/consul:1"}}
registrator: {{image: "consul-reconciler-standin/registrator:1"}}
rollout: {{gates: false}}
snapshots: {{enabled: false}}
names: {{agent: startup-bench-consul, registrator: startup-bench-registrator}}
hosts:
  - {{name: host1, docker: "{docker}", advertise: 127.0.0.1, role: server, data_dir: {data}}}
"""


def _peers() -> dict[str, list[str]]:
    """What a Docker user runs, where installed."""
    found: dict[str, list[str]] = {}
    if shutil.which("docker-compose"):
        found["docker-compose version"] = ["docker-compose", "version"]
    docker = shutil.which("docker")
    if docker:
        if subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
            found["docker compose version"] = [docker, "compose", "version"]
        found["docker version --format"] = [docker, "version", "--format", "{{.Server.Version}}"]
    return found


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system, the process and its children) and exit code."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    return wall, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status)


def startup_figures(runs: int, docker_host: str | None, workdir: Path) -> dict[str, dict[str, Samples]]:
    compileall.compile_dir(ROOT / "reconciler", quiet=1)
    compileall.compile_dir(ROOT / "desired_state", quiet=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["CONSUL_RECONCILER_DB"] = str(workdir / "audit.db")
    env["NO_COLOR"] = "1"
    if docker_host:
        env["DOCKER_HOST"] = docker_host  # the peers' `docker version` asks that engine
    topology = workdir / "topology.yaml"
    topology.write_text(
        TOPOLOGY.format(docker=docker_host or "unix:///nonexistent/docker.sock", data=workdir / "data")
    )
    cli = [sys.executable, "-m", "reconciler.cli"]
    commands: dict[str, list[str]] = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import reconciler.cli'": [sys.executable, "-c", "import reconciler.cli"],
        "--help": [*cli, "--help"],
        "plan --help": [*cli, "plan", "--help"],
        "--version": [*cli, "--version"],
        "plan": [*cli, "plan", str(topology)],
        "apply (nothing to do)": [*cli, "apply", str(topology)],
        "status": [*cli, "status", str(topology)],
        **_peers(),
    }
    _timed([*cli, "apply", str(topology)], env)  # converge first (and create the audit database)
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    codes: dict[str, int] = {}
    for _ in range(runs):
        for name, argv in commands.items():
            seconds, cpu_seconds, code = _timed(argv, env)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
            codes[name] = code
    return {
        name: {
            "wall": Samples.of("s", wall[name]),
            "cpu": Samples.of("s", cpu[name]),
            "exit": Samples.of("code", [float(codes[name])]),
        }
        for name in commands
    }


def document_figures(hosts: int, trials: int) -> dict[str, Samples]:
    """Seconds per step of a new document, YAML and JSON, to the plan against the drifted fleet."""
    import yaml

    from bench.scale import plan_inputs
    from desired_state.load import load_topology
    from reconciler.plan import make_plan

    text, _converged, drifted = plan_inputs(hosts)
    as_json = json.dumps(yaml.safe_load(text), indent=2).encode()
    steps: dict[str, list[float]] = {}
    for _ in range(trials):
        for kind, document in (("yaml", text), ("json", as_json)):
            gc.collect()
            t0 = time.perf_counter()
            loaded = load_topology(document, source=f"scale.{kind}")
            t1 = time.perf_counter()
            desired = loaded.fleet
            t2 = time.perf_counter()
            plan = make_plan(desired, drifted)
            t3 = time.perf_counter()
            for step, seconds in (("parse+validate", t1 - t0), ("render", t2 - t1), ("plan", t3 - t2)):
                steps.setdefault(f"{kind} {step}", []).append(seconds)
            steps.setdefault(f"{kind} parse to plan", []).append(t3 - t0)
            if len(plan.actions) != hosts // 5:
                raise RuntimeError(f"unexpected plan: {len(plan.actions)} actions")
    return {name: Samples.of("s", values) for name, values in steps.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--docker-host", help="an engine with the stand-in images (testbed/fleet.py)")
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cr-startup-") as work:
        start = startup_figures(args.runs, args.docker_host, Path(work))
    document = document_figures(args.hosts, args.trials) if args.hosts else {}
    if args.json:
        data: dict[str, Any] = {
            "startup": {k: {m: s.as_json() for m, s in v.items()} for k, v in start.items()},
            "document": {k: s.as_json() for k, s in document.items()},
        }
        print(json.dumps(data, indent=2))
        return 0
    load = os.getloadavg()[0]
    print(f"start-up as whole processes (load average {load:.1f} on {os.cpu_count()} CPUs):")
    for name, figures in start.items():
        code = int(figures["exit"].median)
        print(f"  {name:40s} {figures['wall'].text()}  cpu {figures['cpu'].text()}  exit {code}")
    if document:
        print(f"a new {args.hosts:,}-host document, parse to plan (drifted fleet):")
        for name, samples in document.items():
            print(f"  {name:40s} {samples.text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
