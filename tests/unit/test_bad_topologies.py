"""The corpus of bad (and a few good) topology files, checked in-process and through the real CLI.

Every ``tests/corpus/bad/NAME.{yaml,json}`` has a ``NAME.expected`` beside it::

    path: hosts[0].docker          the issue's path ("" for the whole document)
    message: has unsupported ...   a substring of the issue's message
    line: 4                        optional: the issue's line (and ``column:``)
    absent: TEXT                   optional, repeatable: must appear nowhere (a secret value)

``tests/corpus/good/NAME.*`` must validate (exit 0); its optional ``.expected`` holds ``warning:`` and
``stdout:`` substrings the CLI must print.

The CLI runs: starting ``python -m reconciler.cli`` costs ~0.9 s of imports (docker, SQLAlchemy), too
slow for ~65 files. So one helper process imports the CLI once and then, per file, forks a child that
runs the module exactly as ``-m`` does (``runpy.run_module(..., run_name="__main__")``) with its own
argv, environment, stdout and stderr: a separate process per file, the same code path, its own exit
code. A few files also go through plain ``sys.executable -m reconciler.cli`` subprocesses, and their
output must be identical to the helper's.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from desired_state.load import Loaded, TopologyError, load_topology

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
BAD = sorted(p for p in (CORPUS / "bad").iterdir() if p.suffix in (".yaml", ".json"))
GOOD = sorted(p for p in (CORPUS / "good").iterdir() if p.suffix in (".yaml", ".json"))
GOSSIP_KEY = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="  # 32 bytes, base64 (`consul keygen`)
MEMORY_HEADROOM = 1 << 30  # alias_bomb.yaml expanded would need tens of GiB


@dataclass(frozen=True)
class Expected:
    path: str | None = None
    message: str | None = None
    line: int | None = None
    column: int | None = None
    absent: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    stdout: tuple[str, ...] = ()


def read_expected(doc: Path) -> Expected:
    file = doc.with_suffix(".expected")
    if not file.exists():
        return Expected()
    values: dict[str, list[str]] = {}
    for raw in file.read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        key, sep, value = raw.partition(":")
        assert sep, f"{file}: line {raw!r} is not 'key: value'"
        values.setdefault(key.strip(), []).append(value.strip())
    known = {"path", "message", "line", "column", "absent", "warning", "stdout"}
    assert set(values) <= known, f"{file}: unknown keys {sorted(set(values) - known)}"

    def one(key: str) -> str | None:
        found = values.get(key, [])
        assert len(found) <= 1, f"{file}: {key!r} given {len(found)} times"
        return found[0] if found else None

    line, column = one("line"), one("column")
    return Expected(
        path=one("path"),
        message=one("message"),
        line=int(line) if line else None,
        column=int(column) if column else None,
        absent=tuple(values.get("absent", [])),
        warnings=tuple(values.get("warning", [])),
        stdout=tuple(values.get("stdout", [])),
    )


def load_file(doc: Path) -> Loaded:
    """As the CLI reads a file: a .json suffix forces JSON."""
    return load_topology(doc.read_bytes(), source=str(doc), fmt="json" if doc.suffix == ".json" else None)


@contextmanager
def memory_cap(extra: int = MEMORY_HEADROOM) -> Iterator[None]:
    """Should a guard regress (aliases expanded, say), fail with MemoryError instead of taking the
    machine down: cap this process's address space at its current size plus ``extra`` for a while."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    in_use = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    cap = in_use + extra if hard == resource.RLIM_INFINITY else min(in_use + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# --- the corpus itself -----------------------------------------------------------------------------------


def test_corpus_is_large_and_complete() -> None:
    assert len(BAD) >= 25
    assert {p.suffix for p in BAD} == {".yaml", ".json"}
    assert sum(p.suffix == ".json" for p in BAD) >= 10
    stems = [p.stem for p in BAD]
    assert len(stems) == len(set(stems)), "two bad files share a stem (and so an .expected)"
    for folder in ("bad", "good"):
        for expected in (CORPUS / folder).glob("*.expected"):
            docs = [expected.with_suffix(s) for s in (".yaml", ".json")]
            assert any(d.exists() for d in docs), f"{expected} describes no document"
    for doc in BAD:
        exp = read_expected(doc)
        assert exp.path is not None and exp.message, f"{doc.name}: needs 'path:' and 'message:'"


def test_corpus_covers_what_it_should() -> None:
    names = {p.name for p in BAD}
    for required in (
        "malformed_yaml.yaml",
        "malformed_json.json",
        "alias_bomb.yaml",
        "deep_nesting.yaml",
        "deep_nesting_json.json",
        "non_utf8.yaml",
        "wrong_type_role.yaml",
        "unknown_field_host.yaml",
        "container_name_space.yaml",
        "node_name_space.yaml",
        "node_name_quotes.yaml",
        "node_name_command_subst.yaml",
        "node_name_leading_dash.yaml",
        "data_dir_dotdot.yaml",
        "duplicate_host_name.yaml",
        "duplicate_docker.json",
        "docker_http.yaml",
        "docker_npipe.json",
        "no_server.yaml",
        "no_hosts.json",
    ):
        assert required in names
    # the non-UTF-8 file really is not UTF-8 (an editor could "fix" it)
    with pytest.raises(UnicodeDecodeError):
        (CORPUS / "bad" / "non_utf8.yaml").read_bytes().decode("utf-8")


# --- in-process: load_topology ---------------------------------------------------------------------------


@pytest.mark.parametrize("doc", BAD, ids=lambda p: p.name)
def test_bad_document_is_a_topology_error_naming_the_problem(doc: Path) -> None:
    exp = read_expected(doc)
    with memory_cap(), pytest.raises(TopologyError) as caught:
        load_file(doc)
    issues = caught.value.issues
    assert issues, "a TopologyError with no issues"
    matching = [i for i in issues if i.path == exp.path and exp.message and exp.message in i.message]
    assert matching, f"no issue at {exp.path!r} containing {exp.message!r}; got {issues}"
    if exp.line is not None:
        assert any(i.line == exp.line for i in matching), [str(i) for i in matching]
    if exp.column is not None:
        assert any(i.column == exp.column for i in matching), [str(i) for i in matching]
    assert str(doc) in str(caught.value)  # the source is named
    for text in exp.absent:
        assert text not in str(caught.value)
        assert all(text not in repr(i) for i in issues)


@pytest.mark.parametrize("doc", GOOD, ids=lambda p: p.name)
def test_good_document_loads_with_its_warnings(doc: Path) -> None:
    exp = read_expected(doc)
    loaded = load_file(doc)
    shown = [str(w) for w in loaded.warnings]
    for text in exp.warnings:
        assert any(text in w for w in shown), shown
    if not exp.warnings:
        assert shown == []


# --- through the CLI -------------------------------------------------------------------------------------

_FORK_RUNNER = r"""
import json, os, resource, runpy, sys
import reconciler.cli  # noqa: F401  (the command line, and what `validate` imports when it runs:
import desired_state.configfiles, desired_state.load, desired_state.secrets, desired_state.tlsfiles  # noqa
import reconciler.formatting, reconciler.sources  # noqa  ...imported once, here, not in every child)

del sys.modules["reconciler.cli"]  # ...and every child runs the module afresh as __main__, as -m does

jobs = json.load(sys.stdin)
results = []
for job in jobs:
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, 1); os.dup2(err, 2)
        for key in job["unset"]:
            os.environ.pop(key, None)
        os.environ.update(job["env"])
        in_use = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = in_use + job["memory"]
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        sys.argv = ["consul-reconciler", *job["args"]]
        code = 0
        try:
            runpy.run_module("reconciler.cli", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 99
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    results.append(os.waitstatus_to_exitcode(status))
json.dump(results, sys.__stdout__)
"""


@dataclass(frozen=True)
class Job:
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_RECONCILER_")}
    env.pop("CONSUL_GOSSIP_KEY", None)
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "400"  # keep rich from wrapping long lines
    return env


def run_cli_batch(jobs: list[Job], workdir: Path) -> list[Result]:
    """Each job in its own forked process running ``reconciler.cli`` as ``__main__``."""
    specs: list[dict[str, Any]] = []
    for index, job in enumerate(jobs):
        specs.append(
            {
                "args": list(job.args),
                "env": job.env,
                "unset": list(job.unset),
                "stdout": str(workdir / f"{index}.out"),
                "stderr": str(workdir / f"{index}.err"),
                "memory": MEMORY_HEADROOM,
            }
        )
    done = subprocess.run(
        [sys.executable, "-c", _FORK_RUNNER],
        input=json.dumps(specs),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_base_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    codes = json.loads(done.stdout)
    return [
        Result(code, Path(s["stdout"]).read_text(), Path(s["stderr"]).read_text())
        for code, s in zip(codes, specs, strict=True)
    ]


def run_cli(job: Job) -> Result:
    """The plain way: ``python -m reconciler.cli ...`` in a fresh interpreter."""
    env = _base_env()
    for key in job.unset:
        env.pop(key, None)
    env.update(job.env)
    done = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *job.args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


GOSSIP_DOC = CORPUS / "good" / "full.yaml"  # has no secret; the gossip jobs write their own file
GOSSIP_JOBS = {
    "unset": ({}, 1, "environment variable CONSUL_GOSSIP_KEY is not set or empty"),
    "not_base64": ({"CONSUL_GOSSIP_KEY": "not a key, just words!"}, 1, "the gossip key is not valid base64"),
    "short": ({"CONSUL_GOSSIP_KEY": "c2hvcnQta2V5"}, 1, "the gossip key decodes to 9 bytes"),
    "valid": ({"CONSUL_GOSSIP_KEY": GOSSIP_KEY}, 0, "valid: cluster gossip"),
}
CROSS_CHECK = ("bad_ip.yaml", "non_utf8.yaml", "even_servers.yaml")


@dataclass
class CliRuns:
    bad: dict[str, Result]
    good: dict[str, Result]
    gossip: dict[str, Result]
    plain: dict[str, Result]  # python -m reconciler.cli, for CROSS_CHECK
    forked: dict[str, Result]  # the same files through the fork runner


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliRuns]:
    work = tmp_path_factory.mktemp("cli")
    gossip_doc = work / "gossip.yaml"
    gossip_doc.write_text(
        "cluster: gossip\nconsul:\n  encrypt: {env: CONSUL_GOSSIP_KEY}\nhosts:\n"
        '  - {name: node1, docker: "unix:///var/run/docker.sock", advertise: 10.0.0.1, role: server}\n'
    )
    by_name = {p.name: p for p in (*BAD, *GOOD)}
    jobs = [Job(("validate", str(p))) for p in BAD]
    jobs += [Job(("validate", str(p))) for p in GOOD]
    jobs += [
        Job(("validate", str(gossip_doc)), env=env, unset=("CONSUL_GOSSIP_KEY",))
        for env, _, _ in GOSSIP_JOBS.values()
    ]
    with ThreadPoolExecutor(max_workers=len(CROSS_CHECK)) as pool:
        plain = pool.map(lambda name: run_cli(Job(("validate", str(by_name[name])))), CROSS_CHECK)
        results = run_cli_batch(jobs, work)
        plain_results = dict(zip(CROSS_CHECK, plain, strict=True))
    bad = dict(zip((p.name for p in BAD), results[: len(BAD)], strict=True))
    good = dict(zip((p.name for p in GOOD), results[len(BAD) : len(BAD) + len(GOOD)], strict=True))
    gossip = dict(zip(GOSSIP_JOBS, results[len(BAD) + len(GOOD) :], strict=True))
    forked = {name: {**bad, **good}[name] for name in CROSS_CHECK}
    yield CliRuns(bad, good, gossip, plain_results, forked)


def _issue_line(path: str, message: str) -> re.Pattern[str]:
    where = re.escape(path) if path else re.escape("(document)")
    return re.compile(rf"^\s*error: {where}(?: \(line \d+(?:, column \d+)?\))?: .*{re.escape(message)}", re.M)


@pytest.mark.parametrize("doc", BAD, ids=lambda p: p.name)
def test_cli_validate_rejects_bad_document(doc: Path, cli_runs: CliRuns) -> None:
    exp = read_expected(doc)
    result = cli_runs.bad[doc.name]
    assert result.code == 1, (result.code, result.stderr)
    assert "Traceback" not in result.stderr
    assert exp.path is not None and exp.message
    assert _issue_line(exp.path, exp.message).search(result.stderr), result.stderr
    assert f"{doc}: " in result.stderr  # the file is named
    assert "valid: cluster" not in result.stdout
    for text in exp.absent:
        assert text not in result.stderr and text not in result.stdout


@pytest.mark.parametrize("doc", GOOD, ids=lambda p: p.name)
def test_cli_validate_accepts_good_document(doc: Path, cli_runs: CliRuns) -> None:
    exp = read_expected(doc)
    result = cli_runs.good[doc.name]
    assert result.code == 0, result.stderr
    assert "error" not in result.stderr
    for text in exp.warnings:
        assert f"warning: {text}" in result.stderr
    if not exp.warnings:
        assert "warning" not in result.stderr
    for text in exp.stdout:
        assert f"{doc}: {text}" in result.stdout


def test_even_number_of_servers_is_a_warning_not_an_error(cli_runs: CliRuns) -> None:
    result = cli_runs.good["even_servers.yaml"]
    assert result.code == 0
    assert "2 servers is an even number" in result.stderr


@pytest.mark.parametrize("case", list(GOSSIP_JOBS))
def test_cli_validate_checks_the_gossip_key_without_showing_it(case: str, cli_runs: CliRuns) -> None:
    env, code, text = GOSSIP_JOBS[case]
    result = cli_runs.gossip[case]
    assert result.code == code, result.stderr
    assert text in (result.stderr if code else result.stdout)
    if code:
        assert "error: consul.encrypt: env:CONSUL_GOSSIP_KEY: " in result.stderr
    for value in env.values():
        assert value not in result.stdout + result.stderr


@pytest.mark.parametrize("name", CROSS_CHECK)
def test_fork_runner_matches_a_plain_python_m_run(name: str, cli_runs: CliRuns) -> None:
    assert cli_runs.plain[name] == cli_runs.forked[name]
