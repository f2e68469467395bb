"""Conventions users bring from Docker's and Consul's command lines: global options after the command,
shell completion, colour on a terminal only (none when piped or with NO_COLOR)."""

from __future__ import annotations

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
