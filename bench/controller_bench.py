"""Controller benchmark on real Docker engines (figures, not a test).

    .venv/bin/python bench/controller_bench.py [--trials 15]

Measures, as medians (min..max) over repeated trials:

1. drift repair latency: a managed container removed by hand -> its replacement running,
   split into detection (Docker's destroy event -> the repair action starts, which includes the
   pass's observation and plan) and Docker work (the create+start action itself);
2. a no-op pass over 3 hosts x 3 containers (agent, registrator and one unmanaged app container
   per host): its duration and the number of Docker API requests it makes.

It starts its own engines under /tmp/crbench (testbed/fleet.py) and the controller in-process.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CR_FLEET_ROOT", "/tmp/crbench")

from bench.request_count import RequestCounter  # noqa: E402
from desired_state.load import load_topology  # noqa: E402
from reconciler.consul_settings import ConsulAddress  # noqa: E402
from reconciler.controller import Controller, ControllerOptions  # noqa: E402
from reconciler.engines import Connections  # noqa: E402
from reconciler.logs import setup_logging  # noqa: E402
from reconciler.one_pass import PassOptions, run_pass  # noqa: E402
from reconciler.sources import (  # noqa: E402
    ConsulSource,
    FileSource,
)
from reconciler.store import ActionFilter, AuditLog  # noqa: E402
from testbed.fleet import (  # noqa: E402
    STANDIN_CONSUL_1,
    STANDIN_CONSUL_2,
    Engine,
    ensure_engines,
    ensure_standin_images,
    fleet_topology,
)

TARGET_DETECTION_MS = 200.0
TARGET_KV_MS = 300.0


def kv_write_to_first_action(engines: list[Engine], tmp: Path, trials: int) -> list[float]:
    """Time from a KV write (the PUT returned) to the first action's audit row starting."""
    from testbed.consul_double import ConsulDouble

    for engine in engines:  # the first sections' containers hold the names this cluster wants
        client = engine.client()
        for container in client.containers.list(all=True):
            container.remove(force=True)
        client.close()
    double = ConsulDouble().start()
    key = "bench/topology"
    doc: dict[str, Any] = fleet_topology(engines, tmp, "benchkv", consul_image=STANDIN_CONSUL_1, gates=False)
    double.kv_put(key, yaml.safe_dump(doc).encode())
    audit = AuditLog(str(tmp / "kv-audit.db"))
    source = ConsulSource(ConsulAddress.parse(f"consul://{double.address}/{key}"))
    controller = Controller(
        source, audit, ControllerOptions(interval=600, http=None, crashloop_attempts=10**6)
    )
    loop = threading.Thread(target=controller.run, daemon=True)
    loop.start()
    deadline = time.monotonic() + 30
    while controller.passes_run < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    latencies: list[float] = []
    images = [STANDIN_CONSUL_1, STANDIN_CONSUL_2]
    for trial in range(trials):
        doc["consul"]["client_image"] = images[(trial + 1) % 2]
        seen = len(audit.actions(ActionFilter(kind="replace", limit=None)))
        put_at = time.time()
        double.kv_put(key, yaml.safe_dump(doc).encode())
        deadline = time.monotonic() + 30
        while len(rows := audit.actions(ActionFilter(kind="replace", limit=None))) == seen:
            if time.monotonic() > deadline:
                raise SystemExit("bench: no replacement started within 30 s of the KV write")
            time.sleep(0.002)
        first = min(r.started_at for r in rows[: len(rows) - seen]).astimezone(UTC).timestamp()
        latencies.append((first - put_at) * 1e3)
        time.sleep(1.0)  # let the replacements finish
    controller.stop()
    loop.join(30)
    audit.close()
    double.stop()
    return latencies


def fmt(values: list[float], unit: str = "ms") -> str:
    med = statistics.median(values)
    return f"{med:8.1f} {unit}  (min {min(values):.1f}, max {max(values):.1f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=15)
    args = parser.parse_args()
    setup_logging("text", logging.WARNING)

    engines = ensure_engines(3)
    ensure_standin_images(engines)
    for engine in engines:
        client = engine.client()
        for container in client.containers.list(all=True):
            container.remove(force=True)
        client.close()
    tmp = Path(tempfile.mkdtemp(prefix="crbench-"))
    topology = fleet_topology(engines, tmp, "bench", consul_image=STANDIN_CONSUL_1, gates=False)
    path = tmp / "topology.yaml"
    path.write_text(yaml.safe_dump(topology))
    audit = AuditLog(str(tmp / "audit.db"))
    # The same container is removed again and again here: that is a crash loop by design, so the
    # crash-loop guard is set out of reach for the measurement.
    options = ControllerOptions(interval=600, http=None, passes=PassOptions(), crashloop_attempts=10**6)
    controller = Controller(FileSource(path), audit, options)
    loop = threading.Thread(target=controller.run, name="controller", daemon=True)
    # Controller.run installs signal handlers only on the main thread; here it runs beside it.
    loop.start()
    deadline = time.monotonic() + 30
    while controller.passes_run < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # event streams connected, first pass done

    # An unmanaged application container per host (what Registrator is for): 3 containers a host.
    for engine in engines:
        client = engine.client()
        client.containers.run(STANDIN_CONSUL_1, ["app"], name="app", network_mode="host", detach=True)
        client.close()

    # --- 1. drift repair latency ---------------------------------------------------------------
    detection, work, total = [], [], []
    target = engines[1]
    client = target.client()
    events_client = target.client()
    for _ in range(args.trials):
        since = time.time()
        container = client.containers.get("registrator")
        removed_at = time.time()
        container.remove(force=True)
        destroy_ns: int | None = None
        for event in events_client.events(
            decode=True,
            since=int(since),
            filters={"type": "container", "event": "destroy", "container": container.id},
        ):
            destroy_ns = event["timeNano"]
            break
        while True:
            try:
                if client.containers.get("registrator").status == "running":
                    break
            except Exception:
                pass
            time.sleep(0.005)
        running_at = time.time()
        if destroy_ns is None:
            raise SystemExit("bench: the engine's event stream ended without the registrator's destroy")
        time.sleep(0.3)  # let the follow-up passes settle
        [row] = audit.actions(ActionFilter(host=target.name, kind="create", limit=1))
        assert row.status == "succeeded" and row.finished_at is not None
        started = row.started_at.astimezone(UTC).timestamp()
        finished = row.finished_at.astimezone(UTC).timestamp()
        detection.append((started - destroy_ns / 1e9) * 1e3)
        work.append((finished - started) * 1e3)
        total.append((running_at - removed_at) * 1e3)
    client.close()
    events_client.close()
    controller.stop()
    loop.join(30)

    # --- 2. no-op pass --------------------------------------------------------------------------
    loaded = load_topology(path.read_bytes())
    requests = RequestCounter()
    connections = Connections(on_request=requests)
    durations, calls = [], []
    run_pass(loaded, source="bench", connections=connections, audit=audit, options=PassOptions())  # warm
    for _ in range(args.trials):
        requests.reset()
        t0 = time.perf_counter()
        result = run_pass(loaded, source="bench", connections=connections, audit=audit, options=PassOptions())
        durations.append((time.perf_counter() - t0) * 1e3)
        assert result.plan.is_noop, result.plan.to_dict()
        calls.append(requests.total())
    per_host = {e.name: requests.total(e.name) for e in engines}
    kinds = requests.kinds()
    connections.close()
    audit.close()

    kv_latency = kv_write_to_first_action(engines, tmp, args.trials)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("command: .venv/bin/python bench/controller_bench.py --trials", args.trials)
    print()
    print("drift repair (registrator removed by hand on one of 3 hosts, resync interval 600 s):")
    print(
        f"  detection (destroy event -> repair action starts): {fmt(detection)}"
        f"   target < {TARGET_DETECTION_MS:.0f} ms: "
        + ("met" if statistics.median(detection) < TARGET_DETECTION_MS else "MISSED")
    )
    print(f"  docker work (create + start + running):          {fmt(work)}")
    print(f"  total (remove returned -> replacement running):  {fmt(total)}")
    print()
    print("no-op pass, 3 hosts x 3 containers (2 managed + 1 unmanaged app each):")
    print(f"  duration:                {fmt(durations)}")
    print(
        f"  Docker API requests:     {statistics.median(calls):.0f} per pass ({', '.join(kinds)}); "
        f"per host in the last pass: {per_host}"
    )
    one_per_host = all(n == 1 for n in per_host.values())
    print(f"  target one list call per host: {'met' if one_per_host else 'MISSED'}")
    print()
    print("Consul KV source (the test double over real HTTP), resync interval 600 s:")
    print(
        f"  KV write -> first action starts: {fmt(kv_latency)}   target < {TARGET_KV_MS:.0f} ms: "
        + ("met" if statistics.median(kv_latency) < TARGET_KV_MS else "MISSED")
    )


if __name__ == "__main__":
    main()
