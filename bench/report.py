"""BENCHMARKS.md and BENCHMARKS.png from the raw figures (BENCHMARKS.json) of bench/compare.py."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.peers import VENV_BIN
from bench.stats import Samples, ratio

SCENARIO_TITLES = {
    "converge": "Converge from empty",
    "noop": "No-op (already converged)",
    "change": "One change (new client image)",
}
TOOL_TITLES = {
    "shell": "shell loop (`docker run`)",
    "compose": "docker-compose 1.29",
    "ansible": "Ansible (default forks=5)",
    "ansible-f30": "Ansible (forks=30)",
    "ours": "ours (`apply`, a process)",
    "ours-pass": "ours (the controller's pass)",
}
PEERS = ("shell", "compose", "ansible", "ansible-f30")

# What bench/scale.py's figures are, in the order the report lists them.
PLAN_FIGURES = {
    "document_kb": "YAML document size",
    "json_document_kb": "the same as JSON",
    "validate": "validate: YAML parse + model (load_topology)",
    "validate_json": "validate: JSON parse + model",
    "validate_model": "validate: the model alone, on parsed data",
    "render": "render the containers",
    "plan_converged": "plan, fleet converged (no actions; new specs, hashed for the first time)",
    "plan_drifted": "plan, fleet drifted (what an unchanged document's pass pays: hashes kept)",
    "plan_drifted_new": "plan, fleet drifted, a new document's specs (hashed for the first time)",
    "actions_drifted": "actions in the drifted plan",
    "render_plan_drifted": "the plan step: render + plan (drifted)",
    "total_converged": "new YAML document, converged: validate + render + plan",
    "total_drifted": "new YAML document, drifted: validate + render + plan",
    "total_drifted_json": "new JSON document, drifted: validate + render + plan",
    "baseline_rss_mb": "RSS of the interpreter with the modules imported",
    "inputs_rss_mb": "RSS with the inputs built",
    "peak_rss_mb": "peak RSS while validating, rendering and planning",
    "step_rss_growth_mb": "RSS growth during the step",
    "step_alloc_peak_mb": "peak Python allocations of the step (tracemalloc)",
}
AUDIT_FIGURES = {
    "insert_per_s": "insert through the executor's path (start + finish action), fresh file",
    "insert_per_s_full": "the same at full size",
    "bulk_rows_per_s": "bulk load (executemany batches)",
    "bulk_total_s": "bulk load, in all",
    "action_rows": "action rows",
    "db_file_mb": "database file",
}

# Targets of the benchmark issue.
NOOP_VS_COMPOSE = 20.0
NOOP_VS_ANSIBLE = 50.0
CONVERGE_VS_ANSIBLE = 5.0
PLAN_SECONDS = 1.0
PLAN_MB = 500.0
QUERY_MS = 20.0
IDLE_RSS_MB = 100.0


def _version(argv: Sequence[str], pattern: str = r"(\d+\.\d+[\w.+-]*)") -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False).stdout
    except OSError:
        return "not installed"
    found = re.search(pattern, out)
    return found.group(1) if found else "unknown"


def tool_versions() -> dict[str, str]:
    """The versions of every tool measured, as they report them."""
    return {
        "dockerd": _version(["dockerd", "--version"]),
        "docker CLI": _version(["docker", "--version"]),
        "docker-compose": _version(["docker-compose", "version", "--short"]),
        "ansible-core": _version([str(VENV_BIN / "ansible"), "--version"], r"core ([\d.]+)"),
        "community.docker": _version(
            [str(VENV_BIN / "ansible-galaxy"), "collection", "list", "community.docker"],
            r"community\.docker\s+([\d.]+)",
        ),
    }


# --------------------------------------------------------------------------------------------------
# Reading the raw figures


def _samples(values: Iterable[float] | None, unit: str) -> Samples | None:
    values = list(values or [])
    return Samples.of(unit, values) if values else None


def _from_json(data: Mapping[str, Any] | None) -> Samples | None:
    if not data:
        return None
    return Samples.of(str(data["unit"]), list(data["samples"]))


def fleet_figure(size: Mapping[str, Any], tool: str, scenario: str) -> Samples | None:
    """Seconds for one tool and scenario at one size; ``ours-pass`` is the in-process no-op pass."""
    if tool == "ours-pass":
        ms = _samples(size.get("pass_ms"), "ms")
        return None if ms is None or scenario != "noop" else Samples.of("s", [v / 1e3 for v in ms.values])
    return _samples(size.get("seconds", {}).get(tool, {}).get(scenario), "s")


def _largest(results: Mapping[str, Any]) -> Mapping[str, Any] | None:
    sizes = results.get("fleet") or []
    return max(sizes, key=lambda s: s["hosts"]) if sizes else None


def _cell(s: Samples | None, unit: str = "s") -> str:
    if s is None:
        return "N/A"
    if unit == "ms" and s.unit == "s":
        s = Samples.of("ms", [v * 1e3 for v in s.values])
    return s.text()


def _times(x: float) -> str:
    return f"{x:.0f}x" if x >= 10 else f"{x:.1f}x"


def _vs(peer: Samples, ours: Samples) -> str:
    """``ours 12x faster`` or, when the peer is quicker, ``ours 2.0x slower``."""
    r = ratio(peer, ours)
    return f"ours {_times(r)} faster" if r >= 1 else f"ours {_times(1 / r)} slower"


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


# --------------------------------------------------------------------------------------------------
# Targets


def targets(results: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, met/missed) rows for whatever parts were measured."""
    rows: list[tuple[str, str, str]] = []
    big = _largest(results)
    if big is not None:
        n = big["hosts"]
        ours_pass = fleet_figure(big, "ours-pass", "noop")
        ours_apply = fleet_figure(big, "ours", "noop")
        for peer, goal in (("compose", NOOP_VS_COMPOSE), ("ansible", NOOP_VS_ANSIBLE)):
            peer_noop = fleet_figure(big, peer, "noop")
            if peer_noop is None or ours_pass is None or ours_apply is None:
                continue
            by_pass, by_apply = ratio(peer_noop, ours_pass), ratio(peer_noop, ours_apply)
            rows.append(
                (
                    f"no-op at {n} hosts >= {goal:.0f}x faster than {peer}",
                    f"controller pass {_times(by_pass)} ({_cell(ours_pass, 'ms')} vs {_cell(peer_noop)}); "
                    f"`apply` as a new process {_times(by_apply)}",
                    _met(by_pass >= goal) + (" (pass); " + _met(by_apply >= goal) + " (`apply`)"),
                )
            )
        calls = big.get("calls_per_host") or []
        if calls:
            rows.append(
                (
                    "exactly one Docker list call per host per no-op pass",
                    f"{min(calls)}..{max(calls)} requests per host over {len(calls)} host-passes "
                    f"({', '.join(big.get('request_kinds') or [])})",
                    _met(set(calls) == {1}),
                )
            )
        ours_converge = fleet_figure(big, "ours", "converge")
        ansible_converge = fleet_figure(big, "ansible", "converge")
        if ours_converge and ansible_converge:
            r = ratio(ansible_converge, ours_converge)
            rows.append(
                (
                    f"converge from empty at {n} hosts >= {CONVERGE_VS_ANSIBLE:.0f}x faster than Ansible "
                    "(forks=5)",
                    f"{_times(r)} ({_cell(ours_converge)} vs {_cell(ansible_converge)})",
                    _met(r >= CONVERGE_VS_ANSIBLE),
                )
            )
    controller = results.get("controller")
    if controller:
        rss = Samples.of("MB", controller["rss_mb"])
        rows.append(
            (
                f"controller idle RSS < {IDLE_RSS_MB:.0f} MB at {controller['hosts']} hosts",
                rss.text(1),
                _met(rss.max < IDLE_RSS_MB),
            )
        )
    scale = results.get("scale") or {}
    plan = (scale.get("plan") or {}).get("10000")
    if plan:
        peak = _from_json(plan.get("peak_rss_mb"))
        for key, what in (
            ("render_plan_drifted", "the plan step (render + plan, 2,000 actions)"),
            ("total_drifted_json", "a new JSON document: parse, validate, render, plan"),
            ("total_drifted", "a new YAML document: parse, validate, render, plan"),
        ):
            figure = _from_json(plan.get(key))
            if figure is not None:
                rows.append(
                    (f"10,000 hosts < 1 s: {what}", figure.text(), _met(figure.median < PLAN_SECONDS))
                )
        if peak is not None:
            rows.append(
                ("plan for 10,000 hosts < 500 MB", f"peak RSS {peak.text(0)}", _met(peak.max < PLAN_MB))
            )
    audit = scale.get("audit") or {}
    for key, title in (
        ("query_by_host_ms", "by host"),
        ("query_by_status_ms", "by status"),
        ("query_since_ms", "since"),
    ):
        q = _from_json(audit.get(key))
        if q is not None:
            rows.append(
                (
                    f"audit query {title} < {QUERY_MS:.0f} ms at {audit.get('rows', 0):,} rows",
                    q.text(),
                    _met(q.median < QUERY_MS),
                )
            )
    return rows


def summary(results: Mapping[str, Any]) -> str:
    lines = ["Targets:"]
    for target, measured, met in targets(results):
        lines.append(f"  {met.replace('*', ''):>7}  {target}: {measured}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Markdown


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _fleet_tables(results: Mapping[str, Any]) -> list[str]:
    sizes = sorted(results.get("fleet") or [], key=lambda s: s["hosts"])
    if not sizes:
        return []
    tools = [t for t in (*PEERS, "ours") if any(t in s.get("seconds", {}) for s in sizes)]
    out: list[str] = []
    for scenario, title in SCENARIO_TITLES.items():
        shown = [*tools, "ours-pass"] if scenario == "noop" else tools
        out += ["", f"### {title}", ""]
        header = ["hosts", *(TOOL_TITLES.get(t, t) for t in shown)]
        rows = []
        for size in sizes:
            ours = fleet_figure(size, "ours", scenario)
            ours_pass = fleet_figure(size, "ours-pass", scenario)
            row = [str(size["hosts"])]
            for tool in shown:
                figure = fleet_figure(size, tool, scenario)
                cell = _cell(figure, "ms" if tool == "ours-pass" else "s")
                if figure is not None and tool in PEERS:
                    versus = [f"{_vs(figure, ours)}" + (" (`apply`)" if ours_pass else "")] if ours else []
                    if ours_pass is not None:
                        versus.append(f"{_vs(figure, ours_pass)} (pass)")
                    cell += "<br>" + "<br>".join(versus)
                elif figure is None and tool == "shell" and scenario == "noop":
                    cell = "N/A: `docker run` again fails on the names"
                row.append(cell)
            rows.append(row)
        out += _table(header, rows)
    return out


def _cpu_section(results: Mapping[str, Any]) -> list[str]:
    """Where the time goes at the largest size: the tool's own CPU and the whole machine's."""
    big = _largest(results)
    if big is None or not big.get("own_cpu_s"):
        return []
    cores = os.cpu_count() or 1
    out = [
        "",
        f"### Where the time goes at {big['hosts']} hosts",
        "",
        f"CPU seconds during each step (medians): the tool's own processes (`ours` includes its Python "
        f"start-up), and the whole machine's busy time, engines included. The machine has {cores} cores, "
        f"so a step whose machine CPU is close to {cores} x its wall time was bounded by the CPU that "
        "every engine shares here, not by the tool; on real hosts each engine has its own.",
        "",
    ]
    rows = []
    for tool in (*PEERS, "ours"):
        for scenario in SCENARIO_TITLES:
            wall = _samples(big["seconds"].get(tool, {}).get(scenario), "s")
            own = _samples(big["own_cpu_s"].get(tool, {}).get(scenario), "s")
            busy = _samples(big["machine_cpu_s"].get(tool, {}).get(scenario), "s")
            if wall is None or own is None or busy is None:
                continue
            rows.append(
                (
                    TOOL_TITLES.get(tool, tool),
                    scenario,
                    f"{wall.median:.2f}",
                    f"{own.median:.2f}",
                    f"{busy.median:.2f}",
                    f"{busy.median / (wall.median * cores):.0%}",
                )
            )
    return out + _table(["tool", "step", "wall s", "own CPU s", "machine CPU s", "machine busy"], rows)


def _reading(results: Mapping[str, Any]) -> list[str]:
    """What bounds the figures, said from the figures themselves."""
    out: list[str] = []
    big = _largest(results)
    startup = _samples(results.get("startup_s"), "s")
    if big is not None:
        n = big["hosts"]
        ours_noop = fleet_figure(big, "ours", "noop")
        ours_pass = fleet_figure(big, "ours-pass", "noop")
        if startup is not None and ours_noop is not None and ours_pass is not None:
            out.append(
                f"- **`apply` as a process** pays Python's start-up before any work: starting the "
                f"interpreter and importing the CLI takes {startup.text()} on its own "
                f"(`python -c 'import reconciler.cli'`), {startup.median / ours_noop.median:.0%} of the "
                f"no-op `apply` at {n} hosts; the pass itself is {_cell(ours_pass, 'ms')}. The running "
                "controller pays the imports once; its passes are the `pass` column."
            )
        cores = os.cpu_count() or 1
        for scenario in ("converge", "change"):
            wall = fleet_figure(big, "ours", scenario)
            busy = _samples(big.get("machine_cpu_s", {}).get("ours", {}).get(scenario), "s")
            own = _samples(big.get("own_cpu_s", {}).get("ours", {}).get(scenario), "s")
            if wall is None or busy is None or own is None:
                continue
            share = busy.median / (wall.median * cores)
            out.append(
                f"- **ours, {SCENARIO_TITLES[scenario].lower()} at {n} hosts:** the machine's {cores} cores "
                f"were {share:.0%} busy for its {wall.median:.2f} s, {own.median:.2f} CPU s of it ours "
                f"and {max(0.0, busy.median - own.median):.2f} the {n} engines' (dockerd, containerd, runc)"
                + (
                    ": the bound here is the CPU every engine shares on one machine, not the hosts' "
                    "number; on real hosts each engine brings its own CPU and the pass waits for the "
                    "slowest host."
                    if share > 0.8
                    else "."
                )
            )
    if big is not None:
        for peer in PEERS:
            wall = fleet_figure(big, peer, "converge")
            own = _samples(big.get("own_cpu_s", {}).get(peer, {}).get("converge"), "s")
            busy = _samples(big.get("machine_cpu_s", {}).get(peer, {}).get("converge"), "s")
            if wall is None or own is None or busy is None:
                continue
            share = busy.median / (wall.median * (os.cpu_count() or 1))
            if own.median > busy.median / 2:
                bound = "its own processes are the bound" + (
                    ", and they kept every core busy: more forks cannot help here"
                    if share > 0.8
                    else " (the engines had CPU to spare)"
                )
            else:
                bound = "it works one host at a time" if share < 0.7 else "the shared CPU is the bound"
            out.append(
                f"- **{TOOL_TITLES[peer]}, converge at {big['hosts']} hosts:** {wall.median:.1f} s, the "
                f"machine {share:.0%} busy, {own.median:.1f} of its {busy.median:.1f} CPU s the tool's "
                f"own: {bound}."
            )
    plan = ((results.get("scale") or {}).get("plan") or {}).get("10000")
    if plan:
        yaml_s = _from_json(plan.get("validate"))
        json_s = _from_json(plan.get("validate_json"))
        step = _from_json(plan.get("render_plan_drifted"))
        if yaml_s is not None and json_s is not None and step is not None:
            out.append(
                f"- **10,000 hosts:** reading and validating the YAML document takes {yaml_s.text()}, "
                f"the same document as JSON {json_s.text()}. libyaml parses it (the pure-Python parser "
                "is kept for the documents that have an error to report, for its messages), but PyYAML "
                "resolves and builds every one of its 110,000 nodes in Python: that is the bound. The "
                f"plan step itself (render + plan) takes {step.text()}. The controller reads and renders "
                "a document once, when its bytes change, not on every pass; a fleet this size can keep "
                "its topology as JSON."
            )
    return ["", "## What bounds the figures", "", *out] if out else []


def _controller_section(results: Mapping[str, Any]) -> list[str]:
    c = results.get("controller")
    if not c:
        return []
    rss = Samples.of("MB", c["rss_mb"])
    cpu = Samples.of("CPU s/hour", c["cpu_s_per_hour"])
    detection = Samples.of("ms", c["detection_ms"])
    out = [
        "",
        f"## The running controller at {c['hosts']} hosts",
        "",
        f"`consul-reconciler run` as its own process, resync every {c['interval']:g} s, Docker event "
        f"streams on every host. Converged {c['hosts']} hosts from empty in {c['startup_converge_s']:.2f} s.",
        "",
    ]
    out += _table(
        ["figure", "ours", "peers"],
        [
            (
                f"resident memory while idle (sampled every second for {len(c['rss_mb'])} s)",
                rss.text(1),
                "no process between runs",
            ),
            (
                f"CPU while idle, per hour ({len(c['cpu_s_per_hour'])} windows "
                f"of {c['window_seconds']:.0f} s)",
                cpu.text(1),
                "no process between runs",
            ),
            (
                "drift noticed: container removed by hand -> the repair action starts",
                _cell(_samples(c.get("trigger_ms"), "ms"), "ms"),
                "N/A: nothing is watching",
            ),
            (
                "detection: container removed by hand -> replacement running",
                detection.text(),
                "N/A: a shell loop, compose or a playbook repairs nothing until someone runs it again",
            ),
        ],
    )
    return out


def _explained(name: str, text: str) -> list[str]:
    """(name, the WHERE clause, the plan lines) from one query's SQL and its EXPLAIN QUERY PLAN."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    sql = next((line for line in lines if line.upper().startswith("SELECT")), "")
    where = sql.partition(" WHERE ")[2].partition(" ORDER BY")[0]
    plan = "; ".join(line for line in lines if not line.upper().startswith("SELECT"))
    return [f"`{name}`", f"`{where}`" if where else "", plan]


def _audit_label(key: str, audit: Mapping[str, Any]) -> str:
    """``query_by_host_ms`` -> ``query by_host (50 rows)``; other keys from AUDIT_FIGURES."""
    if key.startswith("query_") and key.endswith("_ms"):
        name = key[len("query_") : -len("_ms")]
        rows = _from_json(audit.get(f"query_{name}_rows"))
        return f"query `{name}`" + (f" ({rows.median:.0f} rows)" if rows is not None else "")
    return AUDIT_FIGURES.get(key, key)


def _scale_section(results: Mapping[str, Any]) -> list[str]:
    scale = results.get("scale")
    if not scale:
        return []
    out: list[str] = ["", "## Scale without Docker", ""]
    plan = scale.get("plan") or {}
    if plan:
        out += [
            "The pure steps a pass runs on every resync (validate the document, render the containers, plan "
            "against what was observed), on simulated hosts; each size measured in a fresh process so "
            "the peak RSS is the plan's own plus the interpreter's baseline.",
            "",
        ]
        sizes = sorted(plan, key=int)
        keys = [k for k in PLAN_FIGURES if any(k in plan[h] for h in sizes)]
        keys += sorted({k for h in sizes for k in plan[h]} - set(keys))
        rows = [
            [PLAN_FIGURES.get(k, k), *(_cell(_from_json(plan[h].get(k)), "") for h in sizes)] for k in keys
        ]
        out += _table(["figure", *(f"{int(h):,} hosts" for h in sizes)], rows)
    audit = scale.get("audit") or {}
    if audit:
        out += ["", f"The audit log on SQLite with {audit.get('rows', 0):,} action rows:", ""]
        rows = [
            [_audit_label(key, audit), _cell(_from_json(value), "")]
            for key, value in audit.items()
            if isinstance(value, dict) and "samples" in value and not key.endswith("_rows")
        ]
        out += _table(["figure", "median (min..max, n)"], rows)
        explain = audit.get("explain") or {}
        if explain:
            out += [
                "",
                "How SQLite runs each query (`EXPLAIN QUERY PLAN` of the SQL `AuditLog.actions` sends; "
                "every one orders by `started_at DESC, id DESC` with the CLI's `LIMIT`):",
                "",
            ]
            out += _table(["query", "WHERE", "plan"], [_explained(n, t) for n, t in explain.items()])
    for note in scale.get("notes") or []:
        out += ["", note]
    return out


def markdown(results: Mapping[str, Any], chart_name: str) -> str:
    m = results.get("machine", {})
    versions = results.get("versions") or {}
    out = [
        "# Benchmarks",
        "",
        "Generated by `bench/compare.py`; every figure below comes from one run on one machine, the "
        "peers measured side by side with ours on the same engines and images. Figures are medians "
        'with (min..max, n = samples). "ours Nx faster" is the peer\'s median over ours.',
        "",
        f"- Run: {results.get('started', '?')}, {results.get('duration_s', '?')} s in all, "
        f"of the code at commit {results.get('commit', '?')}",
        f"- Machine: {m.get('cpu')}, {m.get('memory')}, Linux {m.get('kernel')}, Python {m.get('python')}",
        "- Tools: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- Reproduce: `bash bench/run.sh` (installs the peers, then runs `{results.get('command')}`)",
        "",
        "## Targets",
        "",
    ]
    out += _table(["target", "measured", ""], targets(results))
    if results.get("fleet"):
        out += [
            "",
            "## Side by side on real engines",
            "",
            "Each host is its own dockerd (testbed/fleet.py) on a loopback address; each runs one Consul "
            "agent (host1 the server, the rest clients) and one Registrator, host networking, the "
            "offline stand-in images. Every tool gets the same containers, rendered by the product "
            "from one topology: same images, command lines, mounts and restart policy. Each trial "
            "starts from no containers; the tools take turns in a rotating order. Times are wall "
            "clock from the command's start to its exit, and every host is checked afterwards. "
            "The change puts every client agent on a new image.",
            "",
            f"![converge, no-op and change times by fleet size]({chart_name})",
        ]
        out += _fleet_tables(results)
        out += _cpu_section(results)
    out += _controller_section(results)
    out += _scale_section(results)
    out += _reading(results)
    for note in results.get("notes") or []:
        out += ["", note]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# Chart


def chart(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    sizes = sorted(results.get("fleet") or [], key=lambda s: s["hosts"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), sharey=True)
    tools = [*PEERS, "ours", "ours-pass"]
    for ax, (scenario, title) in zip(axes, SCENARIO_TITLES.items(), strict=True):
        for tool in tools:
            points = [
                (s["hosts"], figure) for s in sizes if (figure := fleet_figure(s, tool, scenario)) is not None
            ]
            if not points:
                continue
            xs = [n for n, _ in points]
            med = [f.median for _, f in points]
            low = [f.median - f.min for _, f in points]
            high = [f.max - f.median for _, f in points]
            ax.errorbar(
                xs,
                med,
                yerr=[low, high],
                marker="o",
                capsize=3,
                color=f"C{tools.index(tool)}",  # one colour per tool in every panel
                label=TOOL_TITLES.get(tool, tool),
            )
        ax.set_title(title)
        ax.set_xlabel("hosts (real Docker engines)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([s["hosts"] for s in sizes], [str(s["hosts"]) for s in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("seconds, median (bars: min..max)")
    legend: dict[str, Any] = {}
    for ax in axes:  # every series once, whichever panels it appears in
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle("consul-reconciler vs the tools people use today (lower is better)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


SIMSCALE_BEGIN, SIMSCALE_END = "<!-- simscale:begin -->", "<!-- simscale:end -->"


def write(results: Mapping[str, Any], markdown_path: Path, chart_path: Path) -> None:
    if results.get("fleet"):
        chart(results, chart_path)
    text = markdown(results, chart_path.name)
    old = markdown_path.read_text(encoding="utf-8") if markdown_path.exists() else ""
    if SIMSCALE_BEGIN in old and SIMSCALE_END in old:  # bench/simscale.py's section is kept as it was
        kept = old[old.index(SIMSCALE_BEGIN) : old.index(SIMSCALE_END) + len(SIMSCALE_END)]
        text = text.rstrip("\n") + "\n\n" + kept + "\n"
    markdown_path.write_text(text, encoding="utf-8")
