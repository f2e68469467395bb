"""Conventions users bring from Docker's and Consul's command lines: global options after the command,
shell completion, colour on a terminal only (none when piped or with NO_COLOR)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli.app import global_options_first

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = (
    "cluster: x\nhosts:\n"
    "  - {name: h1, docker: 'unix:///nonexistent/docker.sock', advertise: 127.0.10.1, role: server}\n"
)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM")}
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *args],
        cwd=ROOT, env={**base, "PYTHONPATH": str(ROOT), **(env or {})}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def test_global_options_move_before_the_command_and_nothing_after_a_double_dash() -> None:
    assert global_options_first(["plan", "t.yaml", "-v", "--log-format", "json"]) == [
        "-v", "--log-format", "json", "plan", "t.yaml",
    ]  # fmt: skip
    assert global_options_first(["audit", "--log-format=json", "--json"]) == [
        "--log-format=json",
        "audit",
        "--json",
    ]
    assert global_options_first(["kv", "edit", "--", "-v"]) == ["kv", "edit", "--", "-v"]


def test_a_global_option_after_the_command_works(tmp_path: Path) -> None:
    topology = tmp_path / "t.yaml"
    topology.write_text(TOPOLOGY)
    done = cli("plan", str(topology), "--db", str(tmp_path / "a.db"), "--log-format", "json", "-v")
    assert done.returncode == 1, done.stderr  # h1 cannot be observed: not "nothing to do"
    assert "No such option" not in done.stderr and "cluster x: nothing observed" in done.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_name_the_command(shell: str) -> None:
    done = cli("completion", shell)
    assert done.returncode == 0 and "_CONSUL_RECONCILER_COMPLETE" in done.stdout
    assert "consul-reconciler" in done.stdout


def test_completion_completes_commands_and_options() -> None:
    words = {
        "_CONSUL_RECONCILER_COMPLETE": "complete_bash",
        "COMP_WORDS": "consul-reconciler pl",
        "COMP_CWORD": "1",
    }
    assert cli(env=words).stdout.split() == ["plan"]
    unknown = cli("completion", "tcsh")
    assert unknown.returncode == 1 and "one of: bash, zsh, fish" in unknown.stderr


def test_colour_on_a_terminal_only_and_never_with_no_color(tmp_path: Path) -> None:
    topology = tmp_path / "t.yaml"
    topology.write_text(TOPOLOGY)
    args = ("plan", str(topology), "--db", str(tmp_path / "a.db"))
    piped = cli(*args)
    terminal = cli(*args, env={"FORCE_COLOR": "1"})  # rich's stand-in for a terminal
    refused = cli(*args, env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert "\x1b[" not in piped.stdout and "\x1b[" not in refused.stdout
    unreachable = next(
        line for line in terminal.stdout.splitlines() if "unreachable, nothing planned" in line
    )
    assert unreachable.startswith("\x1b[35m  ? unreachable")  # the ? line, magenta
    assert refused.stdout == piped.stdout


def test_every_json_output_is_one_object_with_its_format_version_and_the_same_key_names(
    tmp_path: Path,
) -> None:
    from reconciler.store import ActionRecord, AuditLog

    topology = tmp_path / "t.yaml"
    topology.write_text(TOPOLOGY)
    db = tmp_path / "audit.db"
    log = AuditLog(str(db))
    run = log.start_run(cluster_id="x", trigger="t", source=f"file:{topology}", digest="ab" * 32)
    log.record_action(run, ActionRecord(seq=1, host="h1", kind="create", container="consul"), status="failed")
    log.finish_run(run, status="failed")
    log.state.keep_document(source=f"file:{topology}", digest="ab" * 32, cluster_id="x", document=TOPOLOGY)
    log.close()
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: x\nhosts: []\n")
    outputs = {
        "validate": cli("validate", str(topology), "--json"),
        "render": cli("render", str(topology), "--json"),
        "plan": cli("plan", str(topology), "--db", str(db), "--json"),
        "status": cli("status", str(topology), "--db", str(db), "--json"),
        "audit": cli("audit", "--db", str(db), "--json"),
        "audit --runs": cli("audit", "--runs", "--db", str(db), "--json"),
        "snapshots": cli("snapshots", "--db", str(db), "--json"),
        "kv history": cli("kv", "history", "--db", str(db), "--json"),
        "kv push (invalid)": cli("kv", "push", str(bad), "--consul", "consul://127.0.0.1:1/k", "--json"),
    }
    parsed = {name: json.loads(done.stdout) for name, done in outputs.items()}
    for name, data in parsed.items():
        assert isinstance(data, dict) and next(iter(data)) == "format_version", name
        assert data["format_version"] == 1, name
    assert parsed["render"]["hosts"][0]["host"] == parsed["status"]["hosts"][0]["host"] == "h1"
    assert parsed["plan"]["cluster"] == parsed["status"]["cluster"] == parsed["render"]["cluster"] == "x"
    assert parsed["audit --runs"]["runs"][0]["cluster"] == "x"
    assert parsed["audit"]["actions"][0]["run_id"] == parsed["audit --runs"]["runs"][0]["id"]
    assert parsed["kv history"]["documents"][0]["cluster"] == "x"
    invalid = parsed["kv push (invalid)"]
    assert outputs["kv push (invalid)"].returncode == 1 and invalid["result"] == "invalid"
    assert invalid["errors"][0]["path"] == "hosts" and "message" in invalid["errors"][0]
