"""Fault campaign: SIGKILL the controller at random points of passes that replace containers.

    .venv/bin/python bench/campaign.py --trials 50 [--seed N] [--write RELIABILITY.md]
    .venv/bin/python bench/campaign.py --consul real --trials 20 [--first-engine 21]

Each trial changes the agents' image on a 3-host fleet of real engines (three servers: the agent
stand-in, with the health gates on, so each server's replacement is a graceful leave of Consul's
5 s drain, then its gates), lets the running controller start replacing, SIGKILLs it after a random
delay, starts a new controller, and checks once it converged: every host runs exactly its desired
containers (no duplicate, no leftover temporary, no orphan), every audit row is resolved (none left
"started"), and the kill was found and marked "interrupted" when it landed mid-action. The seed is
printed; the same seed replays the same delays.

With ``--consul real`` the three servers are real Consul agents (testbed/real_consul.py: built from
Consul's Go module; a leave takes about 13 s, a new server becomes a voter after autopilot's 10 s
stabilisation), the kills land anywhere in a rollout of about 90 s, and a second sampler asks every
server for ``/v1/status/leader`` ten times a second: quorum lost means a stretch in which no server
knows a leader for longer than an election takes (``--election-bound``, 10 s), or a server that
answered left with no leader for good. ``--first-engine`` puts the fleet on other engines (and
loopback addresses) than the test suite's, so both can run at once.
"""

from __future__ import annotations

import argparse
import functools
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

from testbed.agent_image import ensure_agent_images  # noqa: E402
from testbed.controller_harness import ControllerProcess, wait_for  # noqa: E402
from testbed.fleet import (  # noqa: E402
    AGENT_IMAGE_1,
    AGENT_IMAGE_2,
    Engine,
    ensure_engines,
    ensure_standin_images,
    fleet_topology,
    reset_engines,
)
from testbed.real_consul import REAL_CONSUL_1, ensure_images  # noqa: E402

RESOLVED = {"succeeded", "failed", "interrupted", "skipped", "waiting"}


@dataclass
class Outcome:
    trials: int = 0
    converged: int = 0
    mid_action: int = 0  # kills that left a "started" row behind (found and marked interrupted)
    recovery_s: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    max_servers_down: int = 0
    leaderless_s: list[float] = field(default_factory=list)  # real Consul: each stretch without a leader


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


class LeaderSampler:
    """Asks every server's HTTP API for /v1/status/leader ten times a second; records each stretch in
    which no answering server knew a leader (an election, or quorum lost)."""

    def __init__(self, addresses: list[str]) -> None:
        import urllib.request

        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
        self.addresses = addresses
        self.windows: list[float] = []
        self._since: float | None = None
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _leader(self, address: str) -> str:
        try:
            with self._opener.open(f"http://{address}:8500/v1/status/leader", timeout=0.5) as response:
                return str(response.read().decode().strip('"\n'))
        except Exception:
            return ""

    def _loop(self) -> None:
        while not self._halt.wait(0.1):
            now = time.monotonic()
            if any(self._leader(a) for a in self.addresses):
                if self._since is not None:
                    self.windows.append(now - self._since)
                    self._since = None
            elif self._since is None:
                self._since = now

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(5)
        if self._since is not None:
            self.windows.append(time.monotonic() - self._since)


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


def run_campaign(
    trials: int,
    seed: int,
    workdir: Path,
    max_delay: float | None = None,
    *,
    real: bool = False,
    first_engine: int = 1,
    election_bound: float = 10.0,
) -> Outcome:
    """Alternates the servers between two agent images; each server's replacement is in flight for
    seconds (the graceful leave, then the gates), long enough to be killed anywhere in it."""
    rng = random.Random(seed)
    if first_engine == 1:
        engines = ensure_engines(3)
    else:
        root = Path(os.environ.get("CR_FLEET_ROOT") or "/tmp/crcampaign-engines")
        engines = [Engine.at(first_engine + i, root) for i in range(3)]
        for engine in engines:
            engine.start()
    ensure_standin_images(engines)
    if real:
        old, new = ensure_images(engines)
        max_delay = 60.0 if max_delay is None else max_delay  # a real rollout of three takes ~90 s
    else:
        ensure_agent_images(engines)
        old, new = AGENT_IMAGE_1, AGENT_IMAGE_2
        max_delay = 2.0 if max_delay is None else max_delay
    reset_engines(engines)
    doc = fleet_topology(engines, workdir, "campaign", consul_image=old, servers=3)
    if real:
        for host in doc["hosts"]:  # type: ignore[attr-defined]
            host["bind"] = host["advertise"]  # real agents on one machine: each on its own address
    leaders: LeaderSampler | None = None
    sampler: ServerSampler | None = None
    topology, db = workdir / "topology.yaml", workdir / "audit.db"
    topology.write_text(yaml.safe_dump(doc))
    outcome = Outcome()
    ctl = ControllerProcess(
        topology, db, workdir / "controller.log", "--interval", "600", "--stop-timeout", "1"
    )
    try:
        ctl.wait_ready(600 if real else 60)
        wait_for(lambda: _converged(engines, old), 60, "the first convergence")
        if real:
            wait_for(lambda: _has_leader(engines), 60, "the first leader")
            leaders = LeaderSampler([e.address for e in engines])
        sampler = ServerSampler(engines)  # from here on, at most one server may be down at a time
        for trial in range(trials):
            image = new if trial % 2 == 0 else old
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
                # its first pass is done: what the killed one left is marked. Against real Consul that pass
                # may carry on the rollout, a server at a time (a leave, then the new voter): minutes
                ctl.wait_ready(600 if real else 60)
                converge_within = 300 if real else 120
                wait_for(
                    functools.partial(_converged, engines, image),
                    converge_within,
                    f"convergence after trial {trial}",
                )
                if real:
                    wait_for(lambda: _healthy(engines), 60, f"autopilot healthy after trial {trial}")
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
        if leaders is not None:
            leaders.stop()
            outcome.leaderless_s = leaders.windows
    outcome.max_servers_down = sampler.max_down if sampler else 0
    long_windows = [w for w in outcome.leaderless_s if w > election_bound]
    if long_windows:
        outcome.violations.append(
            f"quorum lost: {len(long_windows)} stretch(es) without a leader "
            f"longer than {election_bound:.0f} s "
            f"({', '.join(f'{w:.1f} s' for w in long_windows)})"
        )
    if outcome.max_servers_down > 1:
        outcome.violations.append(
            f"{outcome.max_servers_down} servers were down at once (sampled every 50 ms)"
        )
    return outcome


def _get_json(address: str, path: str) -> object:
    import json
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{address}:8500{path}", timeout=2) as response:
        return json.loads(response.read())


def _has_leader(engines: list[Engine]) -> bool:
    try:
        return bool(_get_json(engines[0].address, "/v1/status/leader"))
    except Exception:
        return False


def _healthy(engines: list[Engine]) -> bool:
    for engine in engines:
        try:
            body = _get_json(engine.address, "/v1/operator/autopilot/health")
        except Exception:
            continue
        return bool(body["Healthy"]) and len(body["Servers"] or []) == len(engines)  # type: ignore[index]
    return False


def report(outcome: Outcome, seed: int, trials: int, real: bool = False) -> str:
    rec = outcome.recovery_s or [0.0]
    flag = " --consul real" if real else ""
    windows = outcome.leaderless_s
    lines = [
        f"SIGKILL campaign{' on real Consul ' + REAL_CONSUL_1.rpartition(':')[2] if real else ''}: "
        f"{outcome.trials} trials, seed {seed} "
        f"(`.venv/bin/python bench/campaign.py{flag} --trials {trials} --seed {seed}`)",
        f"- converged after the restart: {outcome.converged}/{outcome.trials}",
        f"- kills that landed mid-action (a row left 'started', found and marked 'interrupted'): "
        f"{outcome.mid_action}",
        f"- restart -> converged: median {statistics.median(rec):.2f} s, max {max(rec):.2f} s",
        f"- most servers down at once (3 servers, sampled every 50 ms): {outcome.max_servers_down}",
        *(
            [
                f"- stretches with no leader (every server asked 10 times a second): {len(windows)}, "
                f"longest {max(windows, default=0.0):.1f} s"
            ]
            if real
            else []
        ),
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
    parser.add_argument(
        "--consul",
        choices=("standin", "real"),
        default="standin",
        help="the servers: the agent stand-in (default) or real Consul built from its Go module",
    )
    parser.add_argument(
        "--first-engine",
        type=int,
        default=1,
        help="engines N..N+2 (loopback 127.0.10.N..): other than 1 keeps clear of the test suite's",
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    print(f"seed {seed}", flush=True)
    real = args.consul == "real"
    started = time.monotonic()
    outcome = run_campaign(
        args.trials,
        seed,
        Path(tempfile.mkdtemp(prefix="crcampaign-")),
        real=real,
        first_engine=args.first_engine,
    )
    minutes, seconds = divmod(int(time.monotonic() - started), 60)
    text = report(outcome, seed, args.trials, real) + f"\n- wall time: {minutes} min {seconds} s"
    print(text)
    if args.write:
        with args.write.open("a") as out:
            out.write(f"\n{text}\n")
    sys.exit(1 if outcome.violations else 0)


if __name__ == "__main__":
    main()
