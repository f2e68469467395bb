"""Soak: random container kills on 5 hosts under a running controller, for a bounded time.

    .venv/bin/python bench/soak.py [--duration 600] [--seed N] [--write RELIABILITY.md]

Every 1-4 s (seeded) a managed container on a random host is killed or removed by hand. At the
end the fleet must be converged; the controller's resident memory and open file descriptors are
printed at the start (after the first convergence) and at the end. It uses its own engines
(/tmp/crsoak) and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CR_FLEET_ROOT", "/tmp/crsoak")

from testbed.controller_harness import ControllerProcess, wait_for  # noqa: E402
from testbed.fleet import (  # noqa: E402
    STANDIN_CONSUL_1,
    Engine,
    ensure_engines,
    ensure_standin_images,
    fleet_topology,
    reset_engines,
)


def rss_and_fds(pid: int) -> tuple[int, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])  # kB
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> dict[str, int]:
    """Open descriptors by kind: sockets, pipes, the audit database files, others."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = (
            target.split(":", 1)[0]
            if ":" in target and not target.startswith("/")
            else ("audit db" if "audit.db" in target else target.rsplit("/", 1)[0])
        )
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items()))


def converged(engines: list[Engine]) -> bool:
    for engine in engines:
        client = engine.client()
        try:
            states = {c["Names"][0].lstrip("/"): c["State"] for c in client.api.containers(all=True)}
        finally:
            client.close()
        if states != {"consul": "running", "registrator": "running"}:
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    print(f"seed {seed}", flush=True)
    engines = ensure_engines(5)
    ensure_standin_images(engines)
    reset_engines(engines)
    work = Path(tempfile.mkdtemp(prefix="crsoak-"))
    topology, db = work / "topology.yaml", work / "audit.db"
    # Docker faults only: busybox agents without gates
    document = fleet_topology(engines, work, "soak", consul_image=STANDIN_CONSUL_1, gates=False)
    topology.write_text(yaml.safe_dump(document))
    ctl = ControllerProcess(
        topology, db, work / "controller.log", "--interval", "30", "--crashloop-attempts", "1000000"
    )
    try:
        ctl.wait_ready(60)
        wait_for(lambda: converged(engines), 60, "the first convergence")
        time.sleep(2)
        start_rss, start_fds = rss_and_fds(ctl.proc.pid)
        start_kinds = fd_kinds(ctl.proc.pid)
        kills = 0
        deadline = time.monotonic() + args.duration
        while time.monotonic() < deadline:  # bounded: stops by itself
            time.sleep(rng.uniform(1.0, 4.0))
            engine = rng.choice(engines)
            name = rng.choice(["consul", "registrator"])
            client = engine.client()
            try:
                container = client.containers.get(name)
                if rng.random() < 0.5:
                    container.kill()
                else:
                    container.remove(force=True)
                kills += 1
            except Exception as exc:  # already gone (being repaired): count nothing
                print(f"skip {engine.name}/{name}: {exc}", flush=True)
            finally:
                client.close()
        wait_for(lambda: converged(engines), 120, "convergence at the end")
        time.sleep(2)
        end_rss, end_fds = rss_and_fds(ctl.proc.pid)
        end_kinds = fd_kinds(ctl.proc.pid)
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        repairs = conn.execute(
            "SELECT count(*) FROM actions WHERE kind IN ('create','start') AND status='succeeded'"
        ).fetchone()[0]
        unresolved = conn.execute("SELECT count(*) FROM actions WHERE status='started'").fetchone()[0]
        conn.close()
    finally:
        ctl.stop()
    text = "\n".join(
        [
            f"Soak: {args.duration:.0f} s, 5 hosts, {kills} containers killed or removed by hand, "
            f"seed {seed} "
            f"(`.venv/bin/python bench/soak.py --duration {args.duration:.0f} --seed {seed}`)",
            "- converged at the end: yes",
            f"- repairs (create/start actions) recorded: {repairs}; rows left unresolved: {unresolved}",
            f"- controller resident memory: {start_rss / 1024:.1f} MiB at the start, "
            f"{end_rss / 1024:.1f} MiB at the end",
            f"- controller open file descriptors: {start_fds} at the start, {end_fds} at the end "
            f"(by kind: {start_kinds} -> {end_kinds})",
        ]
    )
    print(text)
    if args.write:
        with args.write.open("a") as out:
            out.write(f"\n{text}\n")


if __name__ == "__main__":
    main()
