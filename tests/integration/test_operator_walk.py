"""A new operator's path, scripted: validate, plan, run, status, audit, as a person types them (human
output, not --json), with every host reachable, with one host down, with all down, and back.

Each step's command and output go to a transcript (walk.txt in the test's folder) so that a failure
shows what the operator would have read. The assertions are on what a person relies on: the exit
code, the line that names each host's state, and that no output says "no changes" or "drift none"
about a host nobody could look at.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from testbed.controller_harness import ControllerProcess, audit_rows, stop_all, wait_for
from testbed.fleet import Engine
from tests.integration.harness import LABEL, Fleet, Run

MANAGED_BY = f"{LABEL}.managed-by"


class Walk:
    def __init__(self, fleet: Fleet, transcript: Path) -> None:
        self.fleet = fleet
        self.transcript = transcript
        fleet.env["NO_COLOR"] = "1"

    def step(self, *args: str, expect: int) -> str:
        run: Run = self.fleet.cli(*args)
        text = run.stdout + run.stderr
        with self.transcript.open("a") as out:
            out.write(f"$ consul-reconciler {' '.join(args)}\n{text}[exit {run.code}]\n\n")
        assert run.code == expect, f"{' '.join(args)} exited {run.code}, expected {expect}:\n{text}"
        return text

    def plan(self, expect: int) -> str:
        return self.step("plan", str(self.fleet.file), "--db", str(self.fleet.db), expect=expect)

    def status(self, expect: int) -> str:
        return self.step("status", str(self.fleet.file), "--db", str(self.fleet.db), expect=expect)

    def audit(self, *extra: str) -> str:
        return self.step("audit", "--db", str(self.fleet.db), *extra, expect=0)


def host_line(text: str, host: str) -> str:
    """The status line of ``host`` (a row of the host table)."""
    lines = [line for line in text.splitlines() if re.match(rf"\s*{host}\s", line)]
    assert len(lines) == 1, f"one line for {host} expected:\n{text}"
    return lines[0]


def host_block(text: str, host: str) -> str:
    """The lines a plan prints under ``host <name>``, up to the next blank line."""
    match = re.search(rf"(?ms)^host {host}\b.*?(?=^\s*$|\Z)", text)
    assert match, f"no block for {host}:\n{text}"
    return match.group(0)


def converged(fleet: Fleet) -> bool:
    for engine in fleet.engines:
        found = fleet.containers(engine)
        if not all(name in found and found[name]["State"]["Running"] for name in ("consul", "registrator")):
            return False
    return True


def unseen_rows(fleet: Fleet, host: str) -> int:
    query = f"SELECT count(*) FROM actions WHERE host='{host}' AND kind='observe' AND status='failed'"
    return int(audit_rows(fleet.db, query)[0][0])


def test_a_new_operators_path_reads_right_reachable_one_down_all_down(
    clean_fleet: list[Engine], tmp_path: Path
) -> None:
    fleet = Fleet(clean_fleet, tmp_path, cluster="walk")
    walk = Walk(fleet, tmp_path / "walk.txt")
    host1, host2, host3 = clean_fleet

    # --- every host reachable ------------------------------------------------------------------
    text = walk.step("validate", str(fleet.file), expect=0)
    assert "valid" in text and "3 hosts" in text, text
    text = walk.plan(expect=2)
    assert "6 to create" in text, text
    for engine in clean_fleet:
        block = host_block(text, engine.name)
        for name in ("consul", "registrator"):
            assert re.search(rf"\+ create\s+{name} ", block), text
    assert "no changes" not in text

    ctl = ControllerProcess(
        fleet.file,
        fleet.db,
        tmp_path / "controller.log",
        "--interval",
        "600",
        "--backoff-base",
        "0.2",
        "--backoff-max",
        "1",
        env=fleet.env,
    )
    try:
        ctl.wait_ready()
        wait_for(lambda: converged(fleet), 30, "the fleet to converge")
        text = walk.status(expect=0)
        assert "controller: running" in text, text
        for engine in clean_fleet:
            assert "unknown" not in host_line(text, engine.name) and "UNREACHABLE" not in text, text
        text = walk.plan(expect=0)
        assert "every host matches the topology" in text and "unknown" not in text, text
        text = walk.audit("--kind", "create")
        for engine in clean_fleet:
            assert re.search(rf"{engine.name}\W+consul", text), text

        # --- one host down ---------------------------------------------------------------------
        host3.stop()
        wait_for(lambda: unseen_rows(fleet, "host3") == 1, 30, "host3's loss to be audited")
        text = walk.plan(expect=1)
        assert "1 host unreachable, state unknown (host3)" in text, text
        assert not re.search(r"(?m)^no changes\b", text), text
        text = walk.status(expect=1)
        line = host_line(text, "host3")
        assert "UNREACHABLE" in line and "unknown" in line, text
        assert "UNREACHABLE" not in host_line(text, "host1") + host_line(text, "host2"), text
        assert "drift none" not in line
        text = walk.audit("--host", "host3", "--kind", "observe")
        assert "could not be observed" in text, text

        # --- every host down -------------------------------------------------------------------
        host1.stop()
        host2.stop()
        wait_for(
            lambda: unseen_rows(fleet, "host1") == 1 and unseen_rows(fleet, "host2") == 1,
            30,
            "host1 and host2's loss to be audited",
        )
        text = walk.plan(expect=1)
        assert "nothing observed, so nothing known" in text, text
        assert "3 hosts unreachable, state unknown (host1, host2, host3)" in text, text
        text = walk.status(expect=1)
        for engine in clean_fleet:
            assert "UNREACHABLE" in host_line(text, engine.name), text
        assert "controller: running" in text, text
        runs_while_down = run_count(fleet)
        tried = passes(ctl)
        wait_for(lambda: passes(ctl) >= tried + 3, 15, "the controller to retry the hosts")
        assert run_count(fleet) == runs_while_down  # retried, with nothing new to record
        assert all(unseen_rows(fleet, e.name) == 1 for e in clean_fleet)

        # --- back -----------------------------------------------------------------------------
        for engine in clean_fleet:
            engine.start()
        wait_for(lambda: converged(fleet), 60, "the fleet to run again")
        wait_for(lambda: walk_status_code(fleet) == 0, 30, "status to read converged again")
        text = walk.status(expect=0)
        assert "UNREACHABLE" not in text and "unknown" not in text, text
        text = walk.audit("--kind", "observe")
        assert text.count("host answers again") == 3, text
        ctl.signal(signal.SIGTERM)
        ctl.wait(30)
        text = walk.status(expect=0)
        assert "controller: NOT RUNNING" in text, text
    finally:
        stop_all([ctl])
        for engine in clean_fleet:
            if not engine.is_running():
                engine.start()


def run_count(fleet: Fleet) -> int:
    return int(audit_rows(fleet.db, "SELECT count(*) FROM runs")[0][0])


def passes(ctl: ControllerProcess) -> float:
    """consul_reconciler_passes_total, from /metrics."""
    code, text = ctl.get("/metrics")
    assert code == 200, text
    for family in text_string_to_metric_families(text):
        if family.name == "consul_reconciler_passes":
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    raise AssertionError(f"no consul_reconciler_passes_total in /metrics:\n{text}")


def walk_status_code(fleet: Fleet) -> int:
    return fleet.cli("status", str(fleet.file), "--db", str(fleet.db)).code
