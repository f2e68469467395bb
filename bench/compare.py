"""Every benchmark of the project in one command: figures printed, BENCHMARKS.md and a chart written.

    bash bench/run.sh                       # installs the peers, then runs this with the defaults
    .venv/bin/python -m bench.compare [--sizes 3 10 30] [--trials 3] [--idle-seconds 300] ...
    .venv/bin/python -m bench.compare --report-only     # re-render BENCHMARKS.md from the JSON

Parts (each can be left out with --skip):
  fleet       converge from empty, no-op, one change; ours vs a shell loop of `docker run`,
              docker-compose 1.29 and Ansible's docker_container, on N real engines (bench/fleetbench.py)
  controller  the running controller at the largest N: idle memory and CPU, drift detection latency
              (bench/controllercost.py)
  scale       the pure plan for 1,000 and 10,000 simulated hosts; the audit log at 1,000,000 rows
              (bench/scale.py)

The engines are separate dockerd processes under /tmp/crbench (testbed/fleet.py), on loopback
addresses 127.0.10.N, with the offline stand-in images. Raw figures go to BENCHMARKS.json, from
which BENCHMARKS.md and BENCHMARKS.png are rendered (bench/report.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("CR_FLEET_ROOT", "/tmp/crbench")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.stats import machine  # noqa: E402

PARTS = ("fleet", "controller", "scale")
DEFAULT_TOOLS = ("shell", "compose", "ansible", "ansible-f30", "ours")


def _log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 10, 30], help="fleet sizes (hosts)")
    parser.add_argument("--trials", type=int, default=3, help="trials per tool and size (default 3)")
    parser.add_argument("--tools", nargs="+", default=list(DEFAULT_TOOLS), help="tools to compare")
    parser.add_argument("--pass-repeats", type=int, default=10, help="in-process no-op passes per trial")
    parser.add_argument("--idle-seconds", type=float, default=300, help="idle measurement (default 300)")
    parser.add_argument("--idle-windows", type=int, default=5, help="CPU windows within the idle time")
    parser.add_argument("--interval", type=float, default=30, help="the controller's resync interval")
    parser.add_argument("--detect-trials", type=int, default=10, help="drift removals to time")
    parser.add_argument("--plan-hosts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--audit-rows", type=int, default=1_000_000)
    parser.add_argument("--scale-trials", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts to leave out")
    parser.add_argument("--json", type=Path, default=ROOT / "BENCHMARKS.json", help="raw figures")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--chart", type=Path, default=ROOT / "BENCHMARKS.png")
    parser.add_argument("--report-only", action="store_true", help="render the report from --json only")
    return parser.parse_args(argv)


def code_version() -> str:
    """The commit measured, marked when the product's code differs from it."""
    import subprocess

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "desired_state", "reconciler", "pyproject.toml")
    return commit + (" with uncommitted changes to the product" if changed else "")


def startup_seconds(repeats: int) -> list[float]:
    """What any `consul-reconciler` command pays before doing anything: the interpreter starting and
    importing the CLI (SQLAlchemy, docker-py, pydantic, typer), as a new process each time."""
    import subprocess

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import reconciler.cli"], check=True)
        times.append(time.perf_counter() - started)
    return times


def collect_scale(plan_hosts: list[int], rows: int, trials: int, workdir: Path) -> dict[str, object]:
    """The Docker-free figures of bench/scale.py, as JSON."""
    from bench import scale

    plan: dict[str, object] = {}
    for hosts in plan_hosts:
        _log(f"the pure plan for {hosts:,} simulated hosts, {trials} trials")
        plan[str(hosts)] = {k: v.as_json() for k, v in scale.plan_figures(hosts, trials).items()}
    _log(f"the audit log at {rows:,} rows")
    audit_dir = workdir / "audit"
    audit_dir.mkdir(parents=True, exist_ok=True)
    audit: dict[str, object] = {
        k: v.as_json() for k, v in scale.audit_figures(rows, trials, audit_dir).items()
    }
    audit["rows"] = rows
    audit["explain"] = scale.explain_queries(audit_dir)
    return {"plan": plan, "audit": audit}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        saved = json.loads(args.json.read_text())
        report.write(saved, args.markdown, args.chart)
        print(report.summary(saved))
        return 0

    from reconciler.logs import setup_logging

    setup_logging("text", logging.WARNING)
    command = "python -m bench.compare " + shlex.join(sys.argv[1:] if argv is None else argv)
    results: dict[str, object] = {
        "machine": machine(),
        "command": command.strip(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": code_version(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="crbench-work-"))
    _log(f"work folder: {workdir}")

    if "fleet" not in args.skip or "controller" not in args.skip:
        from testbed.fleet import ensure_engines, ensure_standin_images

        _log(f"starting {max(args.sizes)} engines under {os.environ['CR_FLEET_ROOT']} ...")
        engines = ensure_engines(max(args.sizes))
        ensure_standin_images(engines)
        results["versions"] = report.tool_versions()

    if "fleet" not in args.skip:
        from bench import peers
        from bench.fleetbench import run_size

        for tool in args.tools:
            peers.require(tool)
        results["startup_s"] = startup_seconds(args.pass_repeats)
        sizes = []
        for size in sorted(args.sizes):
            _log(f"fleet of {size} hosts, {args.trials} trials, tools {' '.join(args.tools)}")
            sizes.append(
                run_size(engines[:size], args.tools, args.trials, workdir, args.pass_repeats, _log).as_json()
            )
        results["fleet"] = sizes

    if "controller" not in args.skip:
        from bench.controllercost import measure
        from bench.fleetbench import topologies
        from testbed.fleet import reset_engines

        size = max(args.sizes)
        _log(f"the controller on {size} hosts: {args.idle_seconds:.0f} s idle, {args.detect_trials} removals")
        reset_engines(engines[:size])
        before, _ = topologies(engines[:size], workdir / "data")
        cost = measure(
            engines[:size],
            before,
            workdir / "controller",
            idle_seconds=args.idle_seconds,
            windows=args.idle_windows,
            detect_trials=args.detect_trials,
            interval=args.interval,
            log=_log,
        )
        reset_engines(engines[:size])
        results["controller"] = cost.as_json()

    if "scale" not in args.skip:
        results["scale"] = collect_scale(args.plan_hosts, args.audit_rows, args.scale_trials, workdir)

    results["duration_s"] = round(time.monotonic() - started, 1)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    report.write(results, args.markdown, args.chart)
    print()
    print(report.summary(results))
    _log(f"wrote {args.json.name}, {args.markdown.name}, {args.chart.name} in {results['duration_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
