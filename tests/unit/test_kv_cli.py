"""`consul-reconciler kv ...` against a protocol-level Consul double (real HTTP on loopback).

Most cases run the real CLI in a subprocess (`python -m reconciler.cli kv ...`); the push conflict,
which needs a write to land between the command's read and its write, runs in-process.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from desired_state.load import digest_of
from reconciler.cli import app
from reconciler.consul_api import Consul
from reconciler.store import AuditLog, normalize_url
from testbed.consul_double import ConsulDouble

ROOT = Path(__file__).resolve().parents[2]
KEY = "infra/consul-reconciler/topology"
TOKEN = "acl-9f0c2a7e-secret-token-b41d"

VALID = textwrap.dedent(
    """\
    cluster: shop
    datacenter: dc1
    consul: {image: "hashicorp/consul:1.20"}
    hosts:
      - {name: node1, docker: "ssh://admin@10.0.0.1", advertise: 10.0.0.1, role: server}
      - {name: node2, docker: "ssh://admin@10.0.0.2", advertise: 10.0.0.2, role: client}
    """
).encode()
NEWER = VALID.replace(b"consul:1.20", b"consul:1.21")
INVALID = VALID.replace(b"role: server", b"role: boss").replace(
    b"advertise: 10.0.0.2,", b"advertise: 10.0.0.300,"
)
OTHER = VALID.replace(b"cluster: shop", b"cluster: shop  # the other operator's change")


# --- fixtures and helpers ---------------------------------------------------------------------------------


@pytest.fixture
def double() -> Iterator[ConsulDouble]:
    d = ConsulDouble(host="127.0.0.1", port=0)
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def secured() -> Iterator[ConsulDouble]:
    d = ConsulDouble(host="127.0.0.1", port=0, acl_token=TOKEN)
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> Path:
    """Where the CLI's temporary files go (TMPDIR), so a test can see what was kept or removed."""
    where = tmp_path / "tmp"
    where.mkdir()
    return where


@pytest.fixture
def env(tmp_path: Path, tmpdir_env: Path) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {"CONSUL_HTTP_TOKEN", "CONSUL_RECONCILER_SOURCE", "CONSUL_RECONCILER_DB", "VISUAL", "EDITOR"}
    }
    clean.update(
        {
            "CONSUL_RECONCILER_DB": str(tmp_path / "audit.db"),
            "TMPDIR": str(tmpdir_env),
            "PYTHONPATH": str(ROOT),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    return clean


def cli(
    env: dict[str, str], *args: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "kv", *args],
        cwd=ROOT,
        env={**env, **(extra or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def url_of(d: ConsulDouble, key: str = KEY) -> str:
    return f"consul://127.0.0.1:{d.port}/{key}"


def kv_entry(d: ConsulDouble, key: str = KEY, token: str | None = None) -> dict[str, Any] | None:
    """The key as Consul's HTTP API reports it (ModifyIndex, Value in base64), or None."""
    request = urllib.request.Request(f"http://127.0.0.1:{d.port}/v1/kv/{key}")
    if token:
        request.add_header("X-Consul-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            entries: list[dict[str, Any]] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    return entries[0]


def index_of(d: ConsulDouble, key: str = KEY, token: str | None = None) -> int | None:
    entry = kv_entry(d, key, token)
    return None if entry is None else int(entry["ModifyIndex"])


def value_of(d: ConsulDouble, key: str = KEY) -> bytes | None:
    value = d.kv_get(key)
    if isinstance(value, dict):  # tolerate a double that returns the whole entry
        value = value.get("Value")
    return None if value is None else bytes(value)


def editor(tmp_path: Path, body: str) -> str:
    """An $EDITOR value: a Python script (given with arguments, so it is split with shlex)."""
    script = tmp_path / "editor.py"
    script.write_text(
        "import os, sys, urllib.request\n"
        "path = sys.argv[-1]\n"
        "text = open(path, 'rb').read()\n" + textwrap.dedent(body)
    )
    return f"{shlex.quote(sys.executable)} -S {shlex.quote(str(script))}"


def kept_path(stderr: str) -> Path:
    match = re.search(r"your edit is kept in (\S+?\.yaml)", stderr)
    assert match, stderr
    return Path(match.group(1))


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- help --------------------------------------------------------------------------------------------------


def test_every_kv_command_has_help(env: dict[str, str]) -> None:
    result = cli(env, "--help")
    assert result.returncode == 0
    for command in ("push", "pull", "edit", "history", "diff"):
        assert command in result.stdout
        sub = cli(env, command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "Usage:" in sub.stdout
    forced = cli(env, "push", "t.yaml", "--consul", "consul://127.0.0.1:1/k", "--force")
    assert forced.returncode == 2 and "No such option: --force" in forced.stderr  # not offered


# --- push --------------------------------------------------------------------------------------------------


def test_push_creates_then_unchanged_then_updates(
    double: ConsulDouble, env: dict[str, str], tmp_path: Path
) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_bytes(VALID)

    created = cli(env, "push", str(topology), "--consul", url_of(double))
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("created: "), created.stdout
    assert value_of(double) == VALID
    first = index_of(double)
    assert first is not None and first > 0
    assert f"ModifyIndex {first}" in created.stdout
    puts = [path for method, path in double.requests() if method == "PUT"]
    assert len(puts) == 1 and "cas=0" in puts[0], puts  # a create is a CAS on "absent"

    seen = len(double.requests())
    again = cli(env, "push", str(topology), "--consul", url_of(double))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("unchanged: "), again.stdout
    assert "nothing written" in again.stdout
    assert [m for m, _ in double.requests()[seen:]] == ["GET"]  # one read, no write at all
    assert index_of(double) == first

    topology.write_bytes(NEWER)
    updated = cli(env, "push", str(topology), "--consul", url_of(double), "--json")
    assert updated.returncode == 0, updated.stderr
    report = json.loads(updated.stdout)
    second = index_of(double)
    assert second is not None and second > first
    assert report == {
        "format_version": 1,
        "key": url_of(double),
        "result": "updated",
        "previous_modify_index": first,
        "modify_index": second,
        "digest": report["digest"],
    }
    assert value_of(double) == NEWER


def test_push_updates_with_cas_on_the_index_read(
    double: ConsulDouble, env: dict[str, str], tmp_path: Path
) -> None:
    double.kv_put(KEY, OTHER)
    before = index_of(double)
    topology = tmp_path / "t.yaml"
    topology.write_bytes(VALID)
    result = cli(env, "push", str(topology), "--consul", url_of(double))
    assert result.returncode == 0, result.stderr
    assert f"updated: {url_of(double)} (ModifyIndex {before} -> " in result.stdout
    assert value_of(double) == VALID
    puts = [path for method, path in double.requests() if method == "PUT"]
    assert len(puts) == 1 and f"cas={before}" in puts[0], puts


def test_push_invalid_prints_every_issue_and_writes_nothing(
    double: ConsulDouble, env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(INVALID)

    absent = cli(env, "push", str(bad), "--consul", url_of(double))
    assert absent.returncode == 1
    assert "is not a valid topology; nothing was written" in absent.stderr
    assert "hosts[0].role (line 5)" in absent.stderr
    assert "hosts[1].advertise (line 6): '10.0.0.300' is not an IP address" in absent.stderr
    assert absent.stdout == ""
    assert kv_entry(double) is None

    double.kv_put(KEY, VALID)
    before = index_of(double)
    present = cli(env, "push", str(bad), "--consul", url_of(double))
    assert present.returncode == 1
    assert index_of(double) == before
    assert value_of(double) == VALID


def test_push_missing_file_is_one_line(double: ConsulDouble, env: dict[str, str], tmp_path: Path) -> None:
    result = cli(env, "push", str(tmp_path / "nope.yaml"), "--consul", url_of(double))
    assert result.returncode == 1
    assert "nope.yaml: no such file" in one_line_error(result)


def test_push_conflict_when_the_key_changes_between_read_and_write(
    double: ConsulDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another operator writes right after push read the ModifyIndex: Consul refuses the CAS write."""
    double.kv_put(KEY, VALID)
    read_index = index_of(double)
    topology = tmp_path / "t.yaml"
    topology.write_bytes(NEWER)
    real_get = Consul.get
    calls: list[str] = []

    def get_then_someone_writes(self: Any, key: str, **kwargs: Any) -> Any:
        answer = real_get(self, key, **kwargs)
        if not calls:
            double.kv_put(KEY, OTHER)  # the concurrent operator
        calls.append(key)
        return answer

    monkeypatch.setattr(Consul, "get", get_then_someone_writes)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["kv", "push", str(topology), "--consul", url_of(double)])
    assert result.exit_code == 1, result.output
    now = index_of(double)
    assert (
        f"conflict: {url_of(double)} changed in Consul while pushing (ModifyIndex {read_index} -> {now})"
        in (result.output)
    )
    assert "nothing was overwritten" in result.output
    assert value_of(double) == OTHER


def test_push_create_conflict_when_someone_creates_the_key_first(
    double: ConsulDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology = tmp_path / "t.yaml"
    topology.write_bytes(VALID)
    real_get = Consul.get
    calls: list[str] = []

    def get_then_someone_creates(self: Any, key: str, **kwargs: Any) -> Any:
        answer = real_get(self, key, **kwargs)
        if not calls:
            double.kv_put(KEY, OTHER)
        calls.append(key)
        return answer

    monkeypatch.setattr(Consul, "get", get_then_someone_creates)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["kv", "push", str(topology), "--consul", url_of(double)])
    assert result.exit_code == 1, result.output
    assert "was created by someone else while pushing" in result.output
    assert value_of(double) == OTHER


# --- pull --------------------------------------------------------------------------------------------------


def test_pull_prints_the_stored_bytes_and_writes_a_file(
    double: ConsulDouble, env: dict[str, str], tmp_path: Path
) -> None:
    double.kv_put(KEY, VALID)
    printed = cli(env, "pull", "--consul", url_of(double))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.encode() == VALID

    out = tmp_path / "pulled.yaml"
    written = cli(env, "pull", "--consul", url_of(double), "-o", str(out))
    assert written.returncode == 0, written.stderr
    assert out.read_bytes() == VALID
    assert f"wrote {out}" in written.stdout

    as_json = json.loads(cli(env, "pull", "--consul", url_of(double), "--json").stdout)
    assert as_json["document"] == VALID.decode()
    assert as_json["modify_index"] == index_of(double)


def test_pull_address_from_the_environment(double: ConsulDouble, env: dict[str, str]) -> None:
    double.kv_put(KEY, VALID)
    result = cli(env, "pull", extra={"CONSUL_RECONCILER_SOURCE": url_of(double)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == VALID

    not_consul = cli(env, "pull", extra={"CONSUL_RECONCILER_SOURCE": "/etc/topology.yaml"})
    assert not_consul.returncode == 1
    assert "not a consul://HOST:PORT/KEY URL; use --consul" in one_line_error(not_consul)


def test_consul_http_addr_is_the_address_of_a_key_given_without_one(
    double: ConsulDouble, env: dict[str, str], tmp_path: Path
) -> None:
    """As Consul's CLI: consul:///KEY takes the agent from $CONSUL_HTTP_ADDR, for kv and for the
    commands that read a source alike (validate, plan)."""
    double.kv_put(KEY, VALID)
    addr = {"CONSUL_HTTP_ADDR": f"127.0.0.1:{double.port}"}
    pulled = cli(env, "pull", "--consul", f"consul:///{KEY}", extra=addr)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.encode() == VALID
    as_url = cli(
        env,
        "pull",
        "--consul",
        f"consul:///{KEY}",
        "--json",
        extra={"CONSUL_HTTP_ADDR": f"http://127.0.0.1:{double.port}"},
    )
    assert json.loads(as_url.stdout)["key"] == url_of(double)  # recorded with the address it used
    checked = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "validate", f"consul:///{KEY}"],
        cwd=ROOT, env={**env, **addr}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0 and "valid: cluster shop" in checked.stdout, checked.stderr
    nowhere = cli(env, "pull", "--consul", f"consul:///{KEY}", extra={"CONSUL_HTTP_ADDR": "127.0.0.1:1"})
    assert nowhere.returncode == 1 and "Consul at http://127.0.0.1:1 is unreachable" in one_line_error(
        nowhere
    )
    wrong = cli(env, "pull", "--consul", f"consul:///{KEY}", extra={"CONSUL_HTTP_ADDR": "unix:///tmp/c.sock"})
    assert wrong.returncode == 1 and "$CONSUL_HTTP_ADDR unix://...: the controller speaks" in one_line_error(
        wrong
    )


def test_the_flag_names_are_every_commands(double: ConsulDouble, env: dict[str, str], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-the-token\n")
    for name in ("--consul-token-file", "--token-file"):  # the kv commands' old name still works
        done = cli(env, "pull", "--consul", url_of(double), name, str(token_file))
        assert done.returncode == 1 and "no such key" in one_line_error(done), done.stderr
    ca = cli(env, "pull", "--consul", url_of(double), "--consul-ca", str(token_file))
    assert "--consul-ca is only used with Consul over HTTPS" in one_line_error(ca)
    for command in ("validate", "plan", "apply", "status", "render", "resume", "run"):
        helped = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", command, "--help"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "--consul-token-file" in helped.stdout and "--consul-ca" in helped.stdout, command
    kv_help = cli(env, "pull", "--help").stdout
    assert "--consul-token-file" in kv_help and "--consul-ca" in kv_help


def test_pull_missing_key_is_an_error(double: ConsulDouble, env: dict[str, str]) -> None:
    result = cli(env, "pull", "--consul", url_of(double, "no/such/key"))
    assert result.returncode == 1
    line = one_line_error(result)
    assert url_of(double, "no/such/key") in line and "no such key" in line
    assert result.stdout == ""


# --- edit --------------------------------------------------------------------------------------------------


def test_edit_happy_path(double: ConsulDouble, env: dict[str, str], tmp_path: Path, tmpdir_env: Path) -> None:
    double.kv_put(KEY, VALID)
    before = index_of(double)
    script = editor(
        tmp_path,
        """
        open(path, 'wb').write(text.replace(b'consul:1.20', b'consul:1.21'))
        """,
    )
    result = cli(env, "edit", "--consul", url_of(double), extra={"EDITOR": script})
    assert result.returncode == 0, result.stderr
    after = index_of(double)
    assert after is not None and before is not None and after > before
    assert f"(ModifyIndex {before} -> {after}," in result.stdout
    assert value_of(double) == NEWER
    assert list(tmpdir_env.iterdir()) == []  # the temporary file is gone


def test_edit_prefers_visual_and_unchanged_writes_nothing(
    double: ConsulDouble, env: dict[str, str], tmp_path: Path, tmpdir_env: Path
) -> None:
    double.kv_put(KEY, VALID)
    before = index_of(double)
    result = cli(
        env,
        "edit",
        "--consul",
        url_of(double),
        extra={"VISUAL": "true", "EDITOR": "/nonexistent/editor --would-fail"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no change: ")
    assert index_of(double) == before
    assert list(tmpdir_env.iterdir()) == []


def test_edit_invalid_result_keeps_the_file_and_writes_nothing(
    double: ConsulDouble, env: dict[str, str], tmp_path: Path
) -> None:
    double.kv_put(KEY, VALID)
    before = index_of(double)
    script = editor(
        tmp_path,
        f"""
        open(path, 'wb').write({INVALID!r})
        """,
    )
    result = cli(env, "edit", "--consul", url_of(double), extra={"EDITOR": script})
    assert result.returncode == 1
    assert "is not a valid topology; nothing was written" in result.stderr
    assert "hosts[1].advertise (line 6): '10.0.0.300' is not an IP address" in result.stderr
    assert index_of(double) == before
    assert value_of(double) == VALID
    kept = kept_path(result.stderr)
    assert kept.read_bytes() == INVALID


def test_edit_conflict_never_loses_an_update(
    double: ConsulDouble, env: dict[str, str], tmp_path: Path, tmpdir_env: Path
) -> None:
    """While the editor is open another operator writes the key: our CAS write is refused."""
    double.kv_put(KEY, VALID)
    opened_at = index_of(double)
    script = editor(
        tmp_path,
        """
        open(path, 'wb').write(text.replace(b'consul:1.20', b'consul:1.21'))
        request = urllib.request.Request(os.environ['OTHER_OPERATOR_URL'], data=os.environb[b'OTHER_VALUE'],
                                         method='PUT')
        assert urllib.request.urlopen(request, timeout=10).read().strip() == b'true'
        """,
    )
    result = cli(
        env,
        "edit",
        "--consul",
        url_of(double),
        extra={
            "EDITOR": script,
            "OTHER_OPERATOR_URL": f"http://127.0.0.1:{double.port}/v1/kv/{KEY}",
            "OTHER_VALUE": OTHER.decode(),
        },
    )
    assert result.returncode == 1, result.stdout + result.stderr
    now = index_of(double)
    assert now is not None and opened_at is not None and now > opened_at
    line = one_line_error(result)
    assert (
        f"{url_of(double)} changed in Consul since you opened it (ModifyIndex {opened_at} -> {now}); "
        "your edit is kept in "
    ) in line
    assert line.endswith("; nothing was written")
    assert value_of(double) == OTHER  # the other operator's value survives
    kept = kept_path(result.stderr)
    assert kept.parent == tmpdir_env
    assert kept.read_bytes() == NEWER  # and so does our edit


def test_edit_missing_key_and_missing_editor(double: ConsulDouble, env: dict[str, str]) -> None:
    missing = cli(env, "edit", "--consul", url_of(double), extra={"EDITOR": "true"})
    assert missing.returncode == 1
    assert "no such key" in one_line_error(missing)

    double.kv_put(KEY, VALID)
    no_editor = cli(env, "edit", "--consul", url_of(double), extra={"EDITOR": "/nonexistent/editor -w"})
    assert no_editor.returncode == 1
    assert "cannot run the editor '/nonexistent/editor'" in one_line_error(no_editor)
    assert value_of(double) == VALID


def test_edit_keeps_the_file_when_consul_goes_away_before_the_write(
    double: ConsulDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, with the editor replaced: it saves a change, then Consul becomes unreachable."""
    double.kv_put(KEY, VALID)
    seen: list[list[str]] = []

    def fake_editor(argv: list[str], check: bool = False) -> subprocess.CompletedProcess[bytes]:
        seen.append(argv)
        Path(argv[-1]).write_bytes(NEWER)
        double.take_down()
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(subprocess, "run", fake_editor)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", "my-editor --wait  -n")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = CliRunner().invoke(app, ["kv", "edit", "--consul", url_of(double)])
    double.bring_up()
    assert result.exit_code == 1, result.output
    assert seen and seen[0][:3] == ["my-editor", "--wait", "-n"] and len(seen[0]) == 4
    assert f"is unreachable (writing {KEY}); your edit is kept in " in result.output
    kept = kept_path(result.output)
    assert kept.parent == tmp_path
    assert kept.read_bytes() == NEWER
    assert value_of(double) == VALID


# --- Consul down, ACL token --------------------------------------------------------------------------------


def test_consul_unreachable_is_one_line(double: ConsulDouble, env: dict[str, str], tmp_path: Path) -> None:
    topology = tmp_path / "t.yaml"
    topology.write_bytes(VALID)
    double.take_down()
    try:
        for args in (["push", str(topology)], ["pull"], ["edit"]):
            result = cli(env, *args, "--consul", url_of(double), extra={"EDITOR": "true"})
            assert result.returncode == 1, args
            line = one_line_error(result)
            assert "unreachable" in line, line
            assert f"127.0.0.1:{double.port}" in line and KEY in line, line
    finally:
        double.bring_up()


def test_token_is_sent_and_never_printed(secured: ConsulDouble, env: dict[str, str], tmp_path: Path) -> None:
    topology = tmp_path / "t.yaml"
    topology.write_bytes(VALID)

    refused = cli(env, "push", str(topology), "--consul", url_of(secured))
    assert refused.returncode == 1
    assert "permission denied" in one_line_error(refused) or "denied" in refused.stderr
    assert kv_entry(secured, token=TOKEN) is None

    outputs: list[str] = []
    pushed = cli(env, "push", str(topology), "--consul", url_of(secured), extra={"CONSUL_HTTP_TOKEN": TOKEN})
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.startswith("created: ")
    outputs += [pushed.stdout, pushed.stderr]
    assert value_of(secured) == VALID

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    pulled = cli(env, "pull", "--consul", url_of(secured), "--token-file", str(token_file))
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.encode() == VALID
    outputs += [pulled.stdout, pulled.stderr]

    script = editor(tmp_path, "open(path, 'wb').write(text.replace(b'consul:1.20', b'consul:1.21'))\n")
    edited = cli(
        env, "edit", "--consul", url_of(secured), extra={"CONSUL_HTTP_TOKEN": TOKEN, "EDITOR": script}
    )
    assert edited.returncode == 0, edited.stderr
    outputs += [edited.stdout, edited.stderr]

    wrong = cli(env, "pull", "--consul", url_of(secured), extra={"CONSUL_HTTP_TOKEN": "not-" + TOKEN})
    assert wrong.returncode == 1
    outputs += [wrong.stdout, wrong.stderr]
    assert "denied" in one_line_error(wrong)
    for text in outputs:
        assert TOKEN not in text


# --- history and diff --------------------------------------------------------------------------------------


@pytest.fixture
def kept(tmp_path: Path, double: ConsulDouble) -> list[int]:
    """Three kept documents: two versions from the Consul key, one from a file."""
    log = AuditLog(normalize_url(str(tmp_path / "audit.db")))
    try:
        for source, doc in (
            (url_of(double), VALID),
            ("file:/etc/topology.yaml", OTHER),
            (url_of(double), NEWER),
        ):
            log.state.keep_document(
                source=source, digest=digest_of(doc), cluster_id="shop", document=doc.decode()
            )
        return [row.id for row in reversed(log.state.documents())]
    finally:
        log.close()


def test_history_lists_kept_documents_newest_first(
    double: ConsulDouble, env: dict[str, str], kept: list[int]
) -> None:
    result = cli(env, "history")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["id", "digest", "source", "cluster", "first", "seen", "last", "applied"]
    assert [line.split()[0] for line in lines[1:]] == [str(i) for i in reversed(kept)]
    assert lines[1].split()[1] == digest_of(NEWER)[:12]

    only_consul = json.loads(cli(env, "history", "--consul", url_of(double), "--json").stdout)["documents"]
    assert [row["digest"] for row in only_consul] == [digest_of(NEWER), digest_of(VALID)]
    assert {row["source"] for row in only_consul} == {url_of(double)}
    assert "document" not in only_consul[0]

    by_path = cli(env, "history", "--source", "/etc/topology.yaml", "--limit", "5")
    assert [line.split()[0] for line in by_path.stdout.splitlines()[1:]] == [str(kept[1])]

    limited = cli(env, "history", "--limit", "1", "--json")
    assert len(json.loads(limited.stdout)["documents"]) == 1


def test_diff_of_two_kept_documents(env: dict[str, str], kept: list[int]) -> None:
    result = cli(env, "diff", str(kept[0]), digest_of(NEWER)[:8])
    assert result.returncode == 1, result.stderr  # they differ: diff(1)'s and git's convention
    assert result.stdout.startswith(f"--- #{kept[0]} {digest_of(VALID)[:12]}")
    assert '-consul: {image: "hashicorp/consul:1.20"}' in result.stdout.splitlines()
    assert '+consul: {image: "hashicorp/consul:1.21"}' in result.stdout.splitlines()

    same = cli(env, "diff", str(kept[2]), str(kept[2]))
    assert same.returncode == 0
    assert same.stdout.startswith("identical: ")

    unknown = cli(env, "diff", str(kept[0]), "deadbeef")
    assert unknown.returncode == 2  # trouble, not a difference
    assert "no kept document with id or digest 'deadbeef'" in one_line_error(unknown)


def test_history_with_an_empty_database(env: dict[str, str]) -> None:
    AuditLog(normalize_url(env["CONSUL_RECONCILER_DB"])).close()  # made, nothing kept yet
    result = cli(env, "history")
    assert result.returncode == 0
    assert result.stdout.strip() == "no kept documents"


def test_history_and_diff_never_create_a_database(env: dict[str, str]) -> None:
    missing = Path(env["CONSUL_RECONCILER_DB"])
    history = cli(env, "history")
    assert history.returncode == 1
    assert one_line_error(history).startswith(f"error: no audit database at {missing}: nothing was ever")
    diff = cli(env, "diff", "1", "2")
    assert diff.returncode == 2 and "no audit database at" in diff.stderr
    assert not missing.exists() and not missing.parent.joinpath("audit.db-wal").exists()
