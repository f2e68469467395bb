"""What a command line process imports: building the command line (``--help``, a command's ``--help``,
``--version``) loads none of the machinery its commands use, and ``plan`` loads only what a pass needs
(not the controller's scheduler, metrics or web console, nor the Consul client for a file source).

Start-up is most of a `plan` or an `apply` with nothing to do (BENCHMARKS.md; ``bench/startup.py`` has
the figures); a module imported at the top of a command module again would be paid by every command.
Each check runs in a fresh interpreter, since this session has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Never needed to build the command line. (pydantic itself may be: typer converts a command's arguments
# with it. Our models, desired_state.model, are not.)
COMMAND_MACHINERY = (
    "docker",
    "requests",
    "sqlalchemy",
    "alembic",
    "yaml",
    "jinja2",
    "apscheduler",
    "prometheus_client",
    "paramiko",
    "consul",
    "desired_state.model",
    "reconciler.store",
    "reconciler.one_pass",
)
# Never needed by `plan` of a file source (the controller's, the console's, ssh:// engines', Consul's)
NOT_FOR_A_PLAN = ("alembic", "jinja2", "apscheduler", "prometheus_client", "paramiko.client", "consul.std")

RUN = """
import json, runpy, sys
sys.argv = ["consul-reconciler", *json.loads(sys.argv[1])]
try:
    runpy.run_module("reconciler.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, set[str], str]:
    done = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps(list(args))],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    last = done.stdout.strip().splitlines()[-1]
    found = json.loads(last)
    return found["code"], set(found["modules"]), done.stdout


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [name for name in names if name in modules or any(m.startswith(name + ".") for m in modules)]


def test_building_the_command_line_imports_no_command_machinery() -> None:
    check = (
        "import sys, typer\n"
        "from reconciler.cli import app\n"
        "typer.main.get_command(app)\n"
        "print(sorted(sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    modules = set(eval(done.stdout))  # a list of names printed by the child
    assert _loaded(modules, COMMAND_MACHINERY) == []


def test_help_and_version_import_no_command_machinery() -> None:
    for args in (["--help"], ["plan", "--help"], ["apply", "--help"], ["status", "--help"], ["--version"]):
        code, modules, output = _run(*args)
        assert code == 0, output
        assert _loaded(modules, COMMAND_MACHINERY) == [], args


def test_a_plan_imports_what_a_pass_needs_and_nothing_else(tmp_path: Path) -> None:
    topology = tmp_path / "t.yaml"
    topology.write_text(
        "cluster: x\nrollout: {gates: false}\nhosts:\n"
        "  - {name: h1, docker: 'unix:///nonexistent/docker.sock', advertise: 127.0.10.1, role: server}\n"
    )
    db = tmp_path / "audit.db"
    made = subprocess.run(
        [sys.executable, "-c", f"from reconciler.store import AuditLog; AuditLog('sqlite:///{db}').close()"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    code, modules, output = _run("plan", str(topology), "--db", str(db))
    assert code == 1, output  # the one host cannot be observed
    assert {"docker", "sqlalchemy", "desired_state.model", "reconciler.one_pass"} <= modules  # it did plan
    assert _loaded(modules, NOT_FOR_A_PLAN) == []
