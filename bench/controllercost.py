"""The running controller at N hosts: its idle cost and how fast it repairs drift.

``consul-reconciler run`` is started as its own process (as an operator would start it) on a
fleet converged from empty. Then:

- idle: for ``idle_seconds``, its resident memory (VmRSS) and CPU time (utime+stime from
  /proc/<pid>/stat) are read once a second; CPU per hour is each window's CPU seconds scaled to an
  hour (the windows include the periodic resync passes, at the interval given);
- detection: a managed container is removed by hand (a different host each time), and the time
  from the removal's return to the replacement's start (Docker's own State.StartedAt, so no
  polling delay is counted) is recorded.

The peers have no such figure: a shell loop, compose or a playbook notices nothing until someone
runs it again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import docker
import yaml

from bench.peers import VENV_BIN, PeerError
from reconciler.store import ActionFilter, AuditLog
from testbed.fleet import Engine

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class ControllerCost:
    hosts: int
    interval: float
    window_seconds: float
    rss_mb: list[float] = field(default_factory=list)  # one sample a second while idle
    cpu_s_per_hour: list[float] = field(default_factory=list)  # one per window
    detection_ms: list[float] = field(default_factory=list)  # removed -> replacement running
    trigger_ms: list[float] = field(default_factory=list)  # removed -> the repair action starts
    startup_converge_s: float = 0.0

    def as_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise PeerError(f"controller pid {pid}: no VmRSS in /proc")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of the whole line
    return (utime + stime) / CLOCK_TICKS


def _started_at(text: str) -> float:
    """Docker's RFC 3339 timestamp with nanoseconds (``2026-11-27T06:00:00.123456789Z``) as epoch s."""
    stamp, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(stamp + "+00:00").timestamp()
    return seconds + (float("0." + fraction) if fraction else 0.0)


def _all_running(engines: Sequence[Engine], per_host: int) -> bool:
    for engine in engines:
        with contextlib.closing(engine.client()) as client:
            listed = client.api.containers(all=True)
        if len(listed) != per_host or any(c["State"] != "running" for c in listed):
            return False
    return True


def _wait(what: str, check: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise PeerError(f"controller exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise PeerError(f"controller: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)


def measure(
    engines: Sequence[Engine],
    document: dict[str, object],
    workdir: Path,
    *,
    idle_seconds: float,
    windows: int,
    detect_trials: int,
    interval: float,
    log: Callable[[str], None],
) -> ControllerCost:
    workdir.mkdir(parents=True, exist_ok=True)
    topology = workdir / "topology.yaml"
    topology.write_text(yaml.safe_dump(document, sort_keys=False))
    log_path = workdir / "controller.log"
    argv = [
        str(VENV_BIN / "consul-reconciler"),
        "run",
        str(topology),
        "--db",
        str(workdir / "audit.db"),
        "--http",
        "off",
        "--interval",
        str(interval),
        "--no-pull",
        # Removing containers again and again by hand is a crash loop by design: keep the guard away.
        "--crashloop-attempts",
        "1000000",
    ]
    cost = ControllerCost(hosts=len(engines), interval=interval, window_seconds=idle_seconds / windows)
    with log_path.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait("convergence from empty", lambda: _all_running(engines, 2), 300, proc)
            cost.startup_converge_s = time.monotonic() - started
            time.sleep(2.0)  # the follow-up pass, the event streams connected
            log(f"  controller converged {len(engines)} hosts in {cost.startup_converge_s:.2f} s; idle now")
            _idle(proc, cost, idle_seconds, windows)
            log(
                f"  idle: RSS {max(cost.rss_mb):.1f} MB max, CPU "
                + ", ".join(f"{c:.1f}" for c in cost.cpu_s_per_hour)
                + " s/hour"
            )
            with contextlib.closing(AuditLog(str(workdir / "audit.db"))) as audit:
                _detect(engines, proc, audit, cost, detect_trials)
            log(f"  detection: {', '.join(f'{d:.0f}' for d in cost.detection_ms)} ms")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return cost


def _idle(proc: subprocess.Popen[bytes], cost: ControllerCost, idle_seconds: float, windows: int) -> None:
    window = idle_seconds / windows
    for _ in range(windows):
        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        while time.monotonic() - t0 < window:
            cost.rss_mb.append(_rss_mb(proc.pid))
            time.sleep(1.0)
        cpu1, t1 = _cpu_seconds(proc.pid), time.monotonic()
        cost.cpu_s_per_hour.append((cpu1 - cpu0) / (t1 - t0) * 3600)
        if proc.poll() is not None:
            raise PeerError(f"controller exited ({proc.returncode}) while idle")


def _detect(
    engines: Sequence[Engine],
    proc: subprocess.Popen[bytes],
    audit: AuditLog,
    cost: ControllerCost,
    trials: int,
) -> None:
    for trial in range(trials):
        engine = engines[(trial * 7 + 1) % len(engines)]
        name = ("consul", "registrator")[trial % 2]
        with contextlib.closing(engine.client()) as client:
            old = client.containers.get(name)
            old.remove(force=True)
            removed_at = time.time()

            def replaced(
                client: docker.DockerClient = client, old_id: str = old.id, name: str = name
            ) -> bool:
                try:
                    new = client.api.inspect_container(name)
                except docker.errors.NotFound:
                    return False
                return bool(new["Id"] != old_id and new["State"]["Running"])

            _wait(f"{engine.name}/{name} replaced", replaced, 60, proc)
            started = _started_at(client.api.inspect_container(name)["State"]["StartedAt"])
        cost.detection_ms.append((started - removed_at) * 1e3)
        [row] = audit.actions(ActionFilter(host=engine.name, kind="create", limit=1))
        if row.container != name:
            raise PeerError(f"controller: the last create on {engine.name} was {row.container}, not {name}")
        cost.trigger_ms.append((row.started_at.astimezone(UTC).timestamp() - removed_at) * 1e3)
        time.sleep(1.0)  # let the follow-up pass settle before the next removal
