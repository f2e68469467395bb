"""Scale benchmark without Docker (figures, not a test).

    .venv/bin/python -m bench.scale [--hosts 1000 10000] [--rows 1000000] [--trials 5] [--json]

1. The pure plan step for large simulated fleets. A topology document of N hosts (5 servers, the
   rest clients; docker endpoints ``unix:///nonexistent/hostNNNNN.sock`` that nothing connects to,
   loopback advertise addresses 127.x.y.z) is taken through the path the controller runs each pass
   (``DesiredState.load`` then ``one_pass.compute_plan``): ``load_topology`` (YAML parse and
   validation), ``render``, and ``make_plan`` against an observed fleet built as ``observe.py``
   builds it from Docker's container list (``_container`` over list entries carrying our labels).
   Two observed fleets: *converged* (every host runs exactly its rendered containers: the plan is
   empty) and *drifted* (10% of hosts miss their registrator: create; another 10% run the agent
   with an older image: replace). The same topology is also validated as a JSON document
   (``load_topology`` reads either), and by the model alone from already parsed data, to show what
   the YAML parser costs. Times are medians (min..max) of ``trials`` runs in this process.
   Memory (drifted case) is measured in fresh child processes (``python -m bench.scale
   _plan-memory ...``), as the kernel's VmRSS / VmHWM: the resident size of a bare interpreter with
   the modules imported (baseline), the size once the inputs (document bytes, observed fleet) are
   built, the peak while the step runs (the high-water mark is reset just before it, so building the
   inputs does not count), and, in a separate child so that its bookkeeping does not inflate the
   RSS, tracemalloc's peak of the Python allocations the step makes.

2. The audit log on SQLite, a file in ``workdir`` created by the product's ``AuditLog`` (so the
   schema and indexes are the Alembic migrations'): the insert rate through the executor's own
   write path (``start_run``, then ``start_action`` + ``finish_action`` per action, ``finish_run``)
   on the fresh file; a bulk load up to ``rows`` action rows (SQLAlchemy Core executemany in
   batches into the same tables; runs of 1-40 actions over 500 hosts and 180 days, most succeeded,
   some failed, skipped, interrupted, waiting); the insert rate again at that size; and the latency
   of the queries ``consul-reconciler audit`` runs (``AuditLog.actions(ActionFilter(...))`` with
   the CLI's default limit of 50) by host, by status, since a time, host and status, the three
   together, by node, by kind, and by a kind no row has, each repeated at least 20 times on a warm
   page cache.

For a runner: :func:`plan_figures`, :func:`audit_figures` (which leaves ``workdir/audit.db`` in
place) and then :func:`explain_queries` (SQLite's ``EXPLAIN QUERY PLAN`` of each query's SQL as the
product sends it, captured from the engine, by query name).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, event, insert, select
from sqlalchemy.engine import Connection

from bench.stats import Samples, machine
from desired_state.load import load_topology
from desired_state.model import Topology
from desired_state.render import render
from desired_state.spec import ContainerSpec, DesiredFleet
from reconciler import labels as L
from reconciler.actual import ObservedFleet, ObservedHost
from reconciler.observe import _container
from reconciler.plan import Kind, make_plan
from reconciler.store import ActionFilter, ActionModel, ActionRecord, AuditLog, RunModel, parse_since

CLUSTER = "scale"
SERVERS = 5
OLD_CONSUL_IMAGE = "hashicorp/consul:1.19"
MISSING_REGISTRATOR = 3  # hosts whose index ends in 3 miss their registrator (drifted case)
OLD_AGENT_IMAGE = 7  # hosts whose index ends in 7 run the agent with OLD_CONSUL_IMAGE
MEMORY_CHILDREN = 3  # fresh processes per memory figure
TARGET_PLAN_S = 1.0
TARGET_PLAN_MB = 500.0
TARGET_QUERY_MS = 20.0

AUDIT_DB = "audit.db"
CLI_LIMIT = 50  # `consul-reconciler audit --limit` default
AUDIT_HOSTS = 500
AUDIT_DAYS = 180
INSERT_ACTIONS = 5_000  # per insert trial on the fresh file
INSERT_ACTIONS_FULL = 2_000  # per insert trial once the table holds `rows` rows
BULK_BATCH = 10_000
QUERY_REPETITIONS = 30
QUERY_HOST = "host0007"
QUERY_NODE = "host0042"
QUERY_STATUS = "failed"
QUERY_KIND = "replace"
QUERY_KIND_ABSENT = "adopt"
QUERY_SINCE = "3d"
_STATUS_WEIGHTS = {"succeeded": 90.0, "failed": 4.0, "skipped": 3.0, "interrupted": 1.5, "waiting": 1.5}
_KIND_WEIGHTS = {
    "replace": 40.0,
    "create": 30.0,
    "start": 15.0,
    "remove": 8.0,
    "blocked": 4.0,
    "observe": 3.0,
}


# --------------------------------------------------------------------------- plan: inputs


def loopback(index: int) -> str:
    """The advertise address of host ``index``: 127.a.b.c, c in 1..250 (loopback only)."""
    rest, last = divmod(index, 250)
    return f"127.{rest // 256}.{rest % 256}.{last + 1}"


def host_name(index: int) -> str:
    return f"host{index:05d}"


def topology_text(hosts: int) -> bytes:
    """A topology of ``hosts`` hosts, in the block style of examples/blog.yaml."""
    lines = [
        f"cluster: {CLUSTER}",
        "datacenter: dc1",
        "consul:",
        "  image: hashicorp/consul:1.20",
        "  ui: true",
        "registrator:",
        "  image: gliderlabs/registrator:latest",
        "  internal: true",
        "hosts:",
    ]
    for index in range(hosts):
        name = host_name(index)
        lines += [
            f"  - name: {name}",
            f"    docker: unix:///nonexistent/{name}.sock",
            f"    advertise: {loopback(index)}",
            f"    role: {'server' if index < SERVERS else 'client'}",
            "    data_dir: /data/consul",
        ]
    return ("\n".join(lines) + "\n").encode()


def _list_entry(cluster: str, spec: ContainerSpec) -> dict[str, Any]:
    """One item of Docker's container list (GET /containers/json) for a container we created."""
    return {
        "Id": hashlib.sha256(f"{spec.host}/{spec.name}/{spec.image}".encode()).hexdigest(),
        "Names": [f"/{spec.name}"],
        "Image": spec.image,
        "State": "running",
        "Labels": L.labels_for(cluster, spec),
    }


def observed_fleet(desired: DesiredFleet, *, drifted: bool) -> ObservedFleet:
    """What observe_fleet would report: every host reachable and running its rendered containers,
    or (``drifted``) 10% of hosts without a registrator and 10% with an older agent image."""
    hosts: list[ObservedHost] = []
    for index, wanted in enumerate(desired.hosts):
        entries: list[dict[str, Any]] = []
        for spec in wanted.specs:
            if drifted and index % 10 == MISSING_REGISTRATOR and spec.role == "registrator":
                continue
            if drifted and index % 10 == OLD_AGENT_IMAGE and spec.role != "registrator":
                spec = replace(spec, image=OLD_CONSUL_IMAGE)
            entries.append(_list_entry(desired.cluster, spec))
        managed = tuple(_container(entry) for entry in entries)
        hosts.append(ObservedHost(wanted.name, wanted.endpoint, True, None, managed, ()))
    return ObservedFleet(tuple(hosts))


def plan_inputs(hosts: int) -> tuple[bytes, ObservedFleet, ObservedFleet]:
    """The document, and the converged and drifted observed fleets for it."""
    text = topology_text(hosts)
    # Inputs only: libyaml (when there) reads the document faster than the product's strict loader,
    # and the data is the same, so the observed containers carry the labels the timed render makes.
    raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    desired = render(Topology.model_validate(raw))
    return text, observed_fleet(desired, drifted=False), observed_fleet(desired, drifted=True)


# --------------------------------------------------------------------------- plan: time


def _check_plans(hosts: int, converged: int, counts: dict[str, int]) -> None:
    """The simulated fleets mean what they claim (a benchmark of the wrong case is worthless)."""
    expected_create = len(range(MISSING_REGISTRATOR, hosts, 10))
    expected_replace = len(range(OLD_AGENT_IMAGE, hosts, 10))
    if converged or counts[Kind.CREATE] != expected_create or counts[Kind.REPLACE] != expected_replace:
        raise RuntimeError(f"unexpected plans: converged has {converged} actions, drifted {counts}")


# the timed steps of plan_times, in the order it times and prints them
PLAN_STEPS = (
    "validate",
    "validate_json",
    "validate_model",
    "render",
    "plan_converged",
    "plan_drifted",
    "plan_drifted_new",
)


def plan_times(hosts: int, trials: int) -> dict[str, Samples]:
    """Seconds per step, median of ``trials`` runs: validate (``load_topology`` of the YAML document:
    parse and model validation), validate_json (the same topology as a JSON document),
    validate_model (the model validation alone, of the parsed data), render, plan_converged (a new
    document's specs, each hashed for the first time), plan_drifted (the same specs again, hashes
    kept: what a pass of an unchanged document pays), plan_drifted_new (a new rendering's specs, as
    a new document's first plan), and the totals validate + render + plan of a new document:
    total_converged, total_drifted (YAML) and total_drifted_json."""
    text, converged, drifted = plan_inputs(hosts)
    raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    as_json = json.dumps(raw, indent=2).encode()
    steps: dict[str, list[float]] = {name: [] for name in PLAN_STEPS}
    actions = 0
    for _ in range(trials):
        gc.collect()
        t0 = time.perf_counter()
        loaded = load_topology(text, source="scale.yaml")
        t1 = time.perf_counter()
        desired = render(loaded.topology)
        t2 = time.perf_counter()
        quiet = make_plan(desired, converged)
        t3 = time.perf_counter()
        busy = make_plan(desired, drifted)
        t4 = time.perf_counter()
        fresh = render(loaded.topology)  # a spec's hash is kept with it: new specs, hashed anew
        t4b = time.perf_counter()
        make_plan(fresh, drifted)
        t4c = time.perf_counter()
        load_topology(as_json, source="scale.json")
        t5 = time.perf_counter()
        Topology.model_validate(raw)
        t6 = time.perf_counter()
        _check_plans(hosts, len(quiet.actions), {k: busy.counts()[k.value] for k in Kind})
        actions = len(busy.actions)
        times = (t1 - t0, t5 - t4c, t6 - t5, t2 - t1, t3 - t2, t4 - t3, t4c - t4b)
        for key, value in zip(steps, times, strict=True):
            steps[key].append(value)
    figures = {key: Samples.of("s", values) for key, values in steps.items()}
    for name, validate, case in (
        ("total_converged", "validate", "converged"),
        ("total_drifted", "validate", "drifted_new"),
        ("total_drifted_json", "validate_json", "drifted_new"),
    ):
        parts = zip(steps[validate], steps["render"], steps[f"plan_{case}"], strict=True)
        figures[name] = Samples.of("s", [sum(part) for part in parts])
    # The plan step proper, from a validated topology: render + plan. (A controller pass whose
    # document did not change pays only plan_drifted: the parsed and rendered document is kept.)
    figures["render_plan_drifted"] = Samples.of(
        "s", [r + p for r, p in zip(steps["render"], steps["plan_drifted_new"], strict=True)]
    )
    figures["document_kb"] = Samples.of("KiB", [len(text) / 1024])
    figures["json_document_kb"] = Samples.of("KiB", [len(as_json) / 1024])
    figures["actions_drifted"] = Samples.of("actions", [float(actions)])
    return figures


# --------------------------------------------------------------------------- plan: memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        found = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    return int(found.group(1)) if found else 0


def _memory_child(hosts: int, mode: str) -> dict[str, float]:
    """Run in a fresh process. ``baseline``: the modules imported, nothing else. ``rss``: the step's
    peak resident size. ``tracemalloc``: the step's peak of Python allocations.

    Resident sizes are the kernel's VmRSS and VmHWM (this process's high-water mark), not
    ``ru_maxrss``: a child started by vfork+exec, as subprocess starts it, inherits the parent's
    high-water mark into ``ru_maxrss``, and that cannot be reset.
    """
    if mode == "baseline":
        return {"baseline_rss_mb": _status_kib("VmHWM") / 1024}
    text, _converged, drifted = plan_inputs(hosts)
    gc.collect()
    inputs_mb = _status_kib("VmRSS") / 1024
    if mode == "tracemalloc":
        tracemalloc.start()
    else:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")  # reset VmHWM to the current resident size
    loaded = load_topology(text, source="scale.yaml")
    desired = render(loaded.topology)
    plan = make_plan(desired, drifted)
    if mode == "tracemalloc":
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return {"step_alloc_peak_mb": peak / 2**20, "actions": float(len(plan.actions))}
    peak_mb = _status_kib("VmHWM") / 1024
    return {
        "inputs_rss_mb": inputs_mb,
        "peak_rss_mb": peak_mb,
        "step_rss_growth_mb": peak_mb - inputs_mb,
        "actions": float(len(plan.actions)),
    }


def _run_child(hosts: int, mode: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale", "_plan-memory", str(hosts), mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    values: dict[str, float] = json.loads(done.stdout)
    return values


def plan_memory(hosts: int, children: int = MEMORY_CHILDREN) -> dict[str, Samples]:
    """MB, each the median over ``children`` fresh processes, for the drifted case."""
    found: dict[str, list[float]] = {}
    for _ in range(children):
        for mode in ("baseline", "rss", "tracemalloc"):
            for key, value in _run_child(hosts, mode).items():
                if key != "actions":
                    found.setdefault(key, []).append(value)
    return {key: Samples.of("MB", values) for key, values in found.items()}


def plan_figures(hosts: int, trials: int) -> dict[str, Samples]:
    """Everything about the plan step for ``hosts`` simulated hosts: :func:`plan_times` (seconds)
    and :func:`plan_memory` (MB: baseline_rss_mb, inputs_rss_mb, peak_rss_mb, step_rss_growth_mb,
    step_alloc_peak_mb)."""
    figures = plan_times(hosts, trials)
    figures.update(plan_memory(hosts, max(1, min(trials, MEMORY_CHILDREN))))
    return figures


# --------------------------------------------------------------------------- audit


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(digits * 4):0{digits}x}"


def _reason(kind: str, image: str) -> str:
    if kind == "replace":
        return json.dumps([{"field": "image", "old": OLD_CONSUL_IMAGE, "new": image}])
    message = {
        "create": "container is missing",
        "start": "container is exited",
        "remove": "no longer desired on this host",
        "blocked": "name held by container 0123456789ab (consul:1.20, running), not managed by us",
        "observe": "host could not be observed; nothing done on it",
    }[kind]
    return json.dumps([{"message": message}])


def _insert_trial(log: AuditLog, actions: int, rng: random.Random) -> float:
    """Actions/s through the executor's write path: one run, each action written before it happens
    (start_action) and completed after (finish_action), as reconciler.execute does."""
    start = time.perf_counter()
    run_id = log.start_run(cluster_id=CLUSTER, trigger="bench", source="scale.yaml", digest=_hex(rng, 64))
    for seq in range(1, actions + 1):
        host = f"host{rng.randrange(AUDIT_HOSTS):04d}"
        row = log.start_action(
            run_id,
            ActionRecord(
                seq=seq,
                host=host,
                kind="replace",
                node=host,
                role="client",
                container="consul",
                reason=[{"field": "image", "old": OLD_CONSUL_IMAGE, "new": "hashicorp/consul:1.20"}],
                old_hash=_hex(rng, 16),
                new_hash=_hex(rng, 16),
                image="hashicorp/consul:1.20",
                container_id=_hex(rng, 64),
            ),
        )
        log.finish_action(row, status="succeeded", container_id=_hex(rng, 64))
    log.finish_run(run_id, status="succeeded", summary={"replace": actions})
    return actions / (time.perf_counter() - start)


def _count_actions(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(ActionModel.id).order_by(ActionModel.id.desc()).limit(1)) or 0)


def bulk_load(log: AuditLog, rows: int, rng: random.Random, now: datetime) -> list[float]:
    """Add action rows until the table holds ``rows``; returns rows/s of each batch (each batch one
    transaction of runs then their actions, inserted with executemany)."""
    engine = log.engine
    missing = rows - _count_actions(engine)
    rates: list[float] = []
    start_at = now - timedelta(days=AUDIT_DAYS)
    span = timedelta(days=AUDIT_DAYS).total_seconds()
    done = 0
    while done < missing:
        batch = min(BULK_BATCH, missing - done)
        begin = time.perf_counter()
        with engine.begin() as conn:
            _bulk_batch(conn, batch, done / missing, (done + batch) / missing, start_at, span, rng)
        rates.append(batch / (time.perf_counter() - begin))
        done += batch
    return rates


def _bulk_batch(
    conn: Connection,
    count: int,
    first: float,
    last: float,
    start_at: datetime,
    span: float,
    rng: random.Random,
) -> None:
    """``count`` actions in runs of 1-40, their start times spread over [first, last) of the span."""
    sizes: list[int] = []
    while sum(sizes) < count:
        sizes.append(min(rng.randint(1, 40), count - sum(sizes)))
    step = (last - first) * span / len(sizes)
    runs: list[dict[str, Any]] = []
    for index in range(len(sizes)):
        at = start_at + timedelta(seconds=first * span + index * step)
        runs.append(
            {
                "cluster_id": CLUSTER,
                "started_at": at,
                "finished_at": at + timedelta(seconds=30),
                "status": "succeeded",
                "trigger": rng.choice(("interval", "event", "file")),
                "source": "/etc/consul-reconciler/topology.yaml",
                "digest": _hex(rng, 64),
                "controller": "mgmt1:4242",
                "summary": "{}",
                "error": None,
                "lock_holder": None,
                "lock_index": None,
            }
        )
    result = conn.execute(insert(RunModel).returning(RunModel.id, sort_by_parameter_order=True), runs)
    run_ids = list(result.scalars())
    actions: list[dict[str, Any]] = []
    for run_id, run, size in zip(run_ids, runs, sizes, strict=True):
        for seq in range(1, size + 1):
            host = f"host{rng.randrange(AUDIT_HOSTS):04d}"
            kind = _weighted(rng, _KIND_WEIGHTS)
            status = _weighted(rng, _STATUS_WEIGHTS)
            image = "gliderlabs/registrator:latest" if seq % 2 else "hashicorp/consul:1.20"
            started = run["started_at"] + timedelta(milliseconds=200 * seq)
            took = rng.uniform(50, 3000)
            actions.append(
                {
                    "run_id": run_id,
                    "seq": seq,
                    "host": host,
                    "node": host,
                    "role": "registrator" if seq % 2 else rng.choice(("server", "client")),
                    "container": "registrator" if seq % 2 else "consul",
                    "kind": kind,
                    "reason": _reason(kind, image),
                    "old_hash": _hex(rng, 16),
                    "new_hash": _hex(rng, 16),
                    "image": image,
                    "container_id": _hex(rng, 64),
                    "status": status,
                    "error": "engine unreachable: connection refused" if status == "failed" else None,
                    "started_at": started,
                    "finished_at": started + timedelta(milliseconds=took),
                    "duration_ms": took,
                }
            )
    conn.execute(insert(ActionModel), actions)


def common_queries(now: datetime | None = None) -> dict[str, ActionFilter]:
    """The queries timed, as `consul-reconciler audit` builds them (its default --limit)."""
    since = parse_since(QUERY_SINCE, now)
    return {
        "by_host": ActionFilter(host=QUERY_HOST, limit=CLI_LIMIT),
        "by_status": ActionFilter(status=QUERY_STATUS, limit=CLI_LIMIT),
        "since": ActionFilter(since=since, limit=CLI_LIMIT),
        "host_status": ActionFilter(host=QUERY_HOST, status=QUERY_STATUS, limit=CLI_LIMIT),
        "host_status_since": ActionFilter(host=QUERY_HOST, status=QUERY_STATUS, since=since, limit=CLI_LIMIT),
        "by_node": ActionFilter(node=QUERY_NODE, limit=CLI_LIMIT),
        "by_kind": ActionFilter(kind=QUERY_KIND, limit=CLI_LIMIT),
        # no adoption in the data: without an index on kind, the worst case (a walk over every row)
        "by_kind_absent": ActionFilter(kind=QUERY_KIND_ABSENT, limit=CLI_LIMIT),
    }


def time_query(log: AuditLog, query: ActionFilter, repetitions: int) -> tuple[Samples, int]:
    """Milliseconds per ``AuditLog.actions`` call (the statement, the rows and their conversion to
    ActionRow), and the number of rows it returns."""
    found = log.actions(query)  # the first call compiles the statement and warms the page cache
    values: list[float] = []
    for _ in range(repetitions):
        start = time.perf_counter()
        log.actions(query)
        values.append((time.perf_counter() - start) * 1000)
    return Samples.of("ms", values), len(found)


def _fresh(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def audit_figures(rows: int, trials: int, workdir: Path) -> dict[str, Samples]:
    """insert_per_s (fresh file), bulk_rows_per_s (per batch of 10,000), bulk_total_s, action_rows,
    insert_per_s_full (at ``rows`` rows), db_file_mb, and for each of :func:`common_queries`
    query_<name>_ms and query_<name>_rows (how many it returned, at most the CLI's 50);
    ``workdir/audit.db`` is left in place for :func:`explain_queries`."""
    db = workdir / AUDIT_DB
    _fresh(db)
    rng = random.Random(20261127)
    log = AuditLog(str(db))
    try:
        figures = {
            "insert_per_s": Samples.of(
                "actions/s", [_insert_trial(log, INSERT_ACTIONS, rng) for _ in range(trials)]
            )
        }
        now = datetime.now(UTC)
        begin = time.perf_counter()
        rates = bulk_load(log, rows, rng, now)
        figures["bulk_rows_per_s"] = Samples.of("rows/s", rates)
        figures["bulk_total_s"] = Samples.of("s", [time.perf_counter() - begin])
        figures["action_rows"] = Samples.of("rows", [float(_count_actions(log.engine))])
        figures["insert_per_s_full"] = Samples.of(
            "actions/s", [_insert_trial(log, INSERT_ACTIONS_FULL, rng) for _ in range(trials)]
        )
        repetitions = max(QUERY_REPETITIONS, trials)
        for name, query in common_queries().items():
            latency, found = time_query(log, query, repetitions)
            figures[f"query_{name}_ms"] = latency
            figures[f"query_{name}_rows"] = Samples.of("rows", [float(found)])
    finally:
        log.close()
    figures["db_file_mb"] = Samples.of("MB", [db.stat().st_size / 2**20])
    return figures


@contextmanager
def _captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements (and parameters) the engine sends while the block runs."""
    sent: list[tuple[str, Any]] = []

    def listen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", listen)


def explain_queries(workdir: Path) -> dict[str, str]:
    """SQLite's EXPLAIN QUERY PLAN of each of :func:`common_queries`, run on ``workdir/audit.db``
    with the SQL text the product sends (captured from the engine), one line per plan step."""
    log = AuditLog(str(workdir / AUDIT_DB))
    plans: dict[str, str] = {}
    try:
        for name, query in common_queries().items():
            with _captured(log.engine) as sent:
                log.actions(query)
            statement, parameters = next((s, p) for s, p in sent if s.lstrip().upper().startswith("SELECT"))
            with log.engine.connect() as conn:
                steps = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            sql = " ".join(statement.split())
            plans[name] = f"{sql}\n" + "\n".join(f"  {row[-1]}" for row in steps)
    finally:
        log.close()
    return plans


# --------------------------------------------------------------------------- the command


def _filesystem(path: Path) -> str:
    """The file system type holding ``path`` (SQLite's commit cost depends on it)."""
    best = ("", "unknown")
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) > 2 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best[0]):
                best = (parts[1], parts[2])
    return best[1]


def _verdict(value: float, target: float) -> str:
    return "meets" if value < target else "MISSES"


def _print_plan(hosts: int, figures: dict[str, Samples]) -> None:
    size, json_size = figures["document_kb"].median, figures["json_document_kb"].median
    print(f"\nplan step, {hosts:,} hosts (YAML document {size:,.0f} KiB, as JSON {json_size:,.0f} KiB)")
    for key in (*PLAN_STEPS, "total_converged", "total_drifted", "total_drifted_json"):
        print(f"  {key:22} {figures[key].text()}")
    print(f"  {'actions (drifted)':22} {figures['actions_drifted'].median:,.0f}")
    for key in (
        "baseline_rss_mb",
        "inputs_rss_mb",
        "peak_rss_mb",
        "step_rss_growth_mb",
        "step_alloc_peak_mb",
    ):
        print(f"  {key:22} {figures[key].text()}")
    peak = figures["peak_rss_mb"].median
    for name, what in (("total_drifted", "YAML"), ("total_drifted_json", "JSON")):
        total = figures[name].median
        verdict = _verdict(total, TARGET_PLAN_S)
        print(f"  target: total ({what}) < {TARGET_PLAN_S:g} s: {verdict} ({total:.3f} s)")
    print(f"  target: peak RSS < {TARGET_PLAN_MB:g} MB: {_verdict(peak, TARGET_PLAN_MB)} ({peak:.0f} MB)")


def _print_audit(rows: int, filesystem: str, figures: dict[str, Samples], plans: dict[str, str]) -> None:
    print(f"\naudit log, SQLite on {filesystem} ({figures['db_file_mb'].median:,.0f} MB file)")
    print(f"  {'insert (fresh file)':24} {figures['insert_per_s'].text()}  [start_action + finish_action]")
    print(f"  {'bulk load (per batch)':24} {figures['bulk_rows_per_s'].text()}")
    print(f"  {'bulk load (total)':24} {figures['bulk_total_s'].text()} to {rows:,} action rows")
    print(f"  {'insert (at full size)':24} {figures['insert_per_s_full'].text()}")
    worst = 0.0
    for name in common_queries():
        figure = figures[f"query_{name}_ms"]
        found = figures[f"query_{name}_rows"].median
        print(f"  {'query ' + name:24} {figure.text()}  [{found:.0f} rows]")
        if name in ("by_host", "by_status", "since"):
            worst = max(worst, figure.median)
    print(
        f"  target: host/status/since queries < {TARGET_QUERY_MS:g} ms: "
        f"{_verdict(worst, TARGET_QUERY_MS)} (slowest median {worst:.2f} ms)"
    )
    print("\n  EXPLAIN QUERY PLAN (SQL as AuditLog.actions sends it; the column list shortened)")
    columns = len(ActionModel.__table__.columns)
    for name, text in plans.items():
        sql, _, steps = text.partition("\n")
        short = re.sub(r"^SELECT .*? FROM", f"SELECT <{columns} columns> FROM", sql)
        print(f"  [{name}] {short}\n{steps}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["_plan-memory"]:  # the child process of plan_memory
        print(json.dumps(_memory_child(int(args[1]), args[2])))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="*", default=[1000, 10000], help="fleet sizes to plan")
    parser.add_argument("--rows", type=int, default=1_000_000, help="audit action rows (0: skip the audit)")
    parser.add_argument("--trials", type=int, default=5, help="repetitions of each timed figure")
    parser.add_argument("--workdir", type=Path, help="where the audit database goes (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    options = parser.parse_args(args)
    if options.trials < 1:
        parser.error("--trials must be at least 1")
    result: dict[str, Any] = {"machine": machine(), "plan": {}, "audit": None}
    if not options.json:
        print("machine: " + ", ".join(f"{k} {v}" for k, v in result["machine"].items()), flush=True)
    for hosts in options.hosts:
        figures = plan_figures(hosts, options.trials)
        result["plan"][str(hosts)] = {k: v.as_json() for k, v in figures.items()}
        if not options.json:
            _print_plan(hosts, figures)
    if options.rows > 0:
        workdir = options.workdir or Path(tempfile.mkdtemp(prefix="cr-scale-"))
        workdir.mkdir(parents=True, exist_ok=True)
        filesystem = _filesystem(workdir)
        try:
            audit = audit_figures(options.rows, options.trials, workdir)
            plans = explain_queries(workdir)
        finally:
            if options.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
        result["audit"] = {
            "rows": options.rows,
            "filesystem": filesystem,
            "figures": {k: v.as_json() for k, v in audit.items()},
            "explain": plans,
        }
        if not options.json:
            _print_audit(options.rows, filesystem, audit, plans)
    if options.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
