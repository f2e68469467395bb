"""Fault campaign: SIGKILL the controller at random points of passes that replace containers.

    .venv/bin/python bench/campaign.py --trials 50 [--seed N] [--write RELIABILITY.md]

Each trial changes the agents' image on a 3-host fleet of real engines (three servers: the agent
stand-in, with the health gates on, so each server's replacement is a graceful leave of Consul's
5 s drain, then its gates), lets the running controller start replacing, SIGKILLs it after a random
delay, starts a new controller, and checks once it converged: every host runs exactly its desired
containers (no duplicate, no leftover temporary, no orphan), every audit row is resolved (none left
"started"), and the kill was found and marked "interrupted" when it landed mid-action. The seed is
printed; the same seed replays the same delays.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.agent_image import ensure_agent_images  # noqa: E402
from tests.fleet import (  # noqa: E402
    AGENT_IMAGE_1,
    AGENT_IMAGE_2,
    Engine,
    ensure_engines,
    ensure_standin_images,
    fleet_topology,
    reset_engines,
)
from tests.integration.controller_harness import ControllerProcess, wait_for  # noqa: E402

RESOLVED = {"succeeded", "failed", "interrupted", "skipped", "waiting"}


@dataclass
class Outcome:
    trials: int = 0
    converged: int = 0
    mid_action: int = 0  # kills that left a "started" row behind (found and marked interrupted)
    recovery_s: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    max_servers_down: int = 0


class ServerSampler:
    """Counts, every 50 ms, the hosts whose agent (all three are servers) is not running."""

    def __init__(self, engines: list[Engine]) -> None:
        self.engines = engines
        self.max_down = 0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        clients = [e.client() for e in self.engines]
        try:
            while not self._halt.wait(0.05):
                down = 0
                for client in clients:
                    try:
                        running = [c for c in client.api.containers(filters={"name": ["^/consul$"]})]
                    except Exception:
                        running = []
                    down += 0 if running else 1
                self.max_down = max(self.max_down, down)
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(5)


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def _state(engines: list[Engine]) -> dict[str, dict[str, tuple[str, str]]]:
    found: dict[str, dict[str, tuple[str, str]]] = {}
    for engine in engines:
        client = engine.client()
        try:
            found[engine.name] = {
                c["Names"][0].lstrip("/"): (c["Image"], c["State"]) for c in client.api.containers(all=True)
            }
        finally:
            client.close()
    return found


def _converged(engines: list[Engine], image: str) -> bool:
    for containers in _state(engines).values():
        if set(containers) != {"consul", "registrator"}:
            return False
        if containers["consul"] != (image, "running") or containers["registrator"][1] != "running":
            return False
    return True


def run_campaign(trials: int, seed: int, workdir: Path, max_delay: float = 2.0) -> Outcome:
    """Alternates the servers between two agent images; each server's replacement is in flight for
    seconds (the graceful leave, then the gates), long enough to be killed anywhere in it."""
    rng = random.Random(seed)
    engines = ensure_engines(3)
    ensure_standin_images(engines)
    ensure_agent_images(engines)
    reset_engines(engines)
    doc = fleet_topology(engines, workdir, "campaign", consul_image=AGENT_IMAGE_1, servers=3)
    sampler: ServerSampler | None = None
    topology, db = workdir / "topology.yaml", workdir / "audit.db"
    topology.write_text(yaml.safe_dump(doc))
    outcome = Outcome()
    ctl = ControllerProcess(
        topology, db, workdir / "controller.log", "--interval", "600", "--stop-timeout", "1"
    )
    try:
        ctl.wait_ready(60)
        wait_for(lambda: _converged(engines, AGENT_IMAGE_1), 60, "the first convergence")
        sampler = ServerSampler(engines)  # from here on, at most one server may be down at a time
        for trial in range(trials):
            image = AGENT_IMAGE_2 if trial % 2 == 0 else AGENT_IMAGE_1
            doc["consul"]["image"] = image  # type: ignore[index]
            topology.write_text(yaml.safe_dump(doc))
            time.sleep(rng.uniform(0.0, max_delay))
            ctl.signal(signal.SIGKILL)
            ctl.wait(10)
            started = _rows(db, "SELECT count(*) FROM actions WHERE status='started'")[0][0]
            killed_at = time.monotonic()
            ctl = ControllerProcess(
                topology, db, workdir / "controller.log", "--interval", "600", "--stop-timeout", "1"
            )
            outcome.trials += 1
            try:
                ctl.wait_ready(60)  # its first pass is done: what the killed one left is marked
                wait_for(lambda img=image: _converged(engines, img), 120, f"convergence after trial {trial}")
            except AssertionError as exc:
                outcome.violations.append(f"trial {trial}: {exc}; state {_state(engines)}")
                continue
            outcome.converged += 1
            outcome.recovery_s.append(time.monotonic() - killed_at)
            time.sleep(0.3)  # the new controller's first pass has marked what it found
            statuses = {str(s) for (s,) in _rows(db, "SELECT DISTINCT status FROM actions")}
            if not statuses <= RESOLVED:
                outcome.violations.append(f"trial {trial}: unresolved action rows: {statuses - RESOLVED}")
            if started:
                outcome.mid_action += 1
                interrupted = _rows(db, "SELECT count(*) FROM actions WHERE status='interrupted'")[0][0]
                if not interrupted:
                    outcome.violations.append(f"trial {trial}: a started row was not marked interrupted")
            leftovers = [n for host in _state(engines).values() for n in host if "-next-" in n]
            if leftovers:
                outcome.violations.append(f"trial {trial}: leftover temporaries {leftovers}")
    finally:
        ctl.stop()
        if sampler is not None:
            sampler.stop()
    outcome.max_servers_down = sampler.max_down if sampler else 0
    if outcome.max_servers_down > 1:
        outcome.violations.append(
            f"{outcome.max_servers_down} servers were down at once (sampled every 50 ms)"
        )
    return outcome


def report(outcome: Outcome, seed: int, trials: int) -> str:
    rec = outcome.recovery_s or [0.0]
    lines = [
        f"SIGKILL campaign: {outcome.trials} trials, seed {seed} "
        f"(`.venv/bin/python bench/campaign.py --trials {trials} --seed {seed}`)",
        f"- converged after the restart: {outcome.converged}/{outcome.trials}",
        f"- kills that landed mid-action (a row left 'started', found and marked 'interrupted'): "
        f"{outcome.mid_action}",
        f"- restart -> converged: median {statistics.median(rec):.2f} s, max {max(rec):.2f} s",
        f"- most servers down at once (3 servers, sampled every 50 ms): {outcome.max_servers_down}",
        f"- invariant violations: {len(outcome.violations)}",
        *[f"  - {v}" for v in outcome.violations[:10]],
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--write", type=Path, default=None, help="append the figures to this file")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    print(f"seed {seed}", flush=True)
    outcome = run_campaign(args.trials, seed, Path(tempfile.mkdtemp(prefix="crcampaign-")))
    text = report(outcome, seed, args.trials)
    print(text)
    if args.write:
        with args.write.open("a") as out:
            out.write(f"\n{text}\n")
    sys.exit(1 if outcome.violations else 0)


if __name__ == "__main__":
    main()
