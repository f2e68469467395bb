"""`run` as a service: its configuration file (flags and environment win over it) and systemd's
notifications (READY=1, WATCHDOG=1 while healthy, STOPPING=1) on a real datagram socket. The one host
is a socket path where no engine listens: the controller runs, passes end, nothing is converged."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.controller_harness import free_port

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = (
    "cluster: svc\nhosts:\n"
    "  - {name: h1, docker: 'unix:///nonexistent/docker.sock', advertise: 127.0.10.1, role: server}\n"
)


def start(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONSUL_RECONCILER_", "NOTIFY_", "WATCHDOG_"))
    }
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "run", *args],
        cwd=tmp_path, env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def healthz(port: int, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                return response.status == 200
        except OSError:
            time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out.decode()


def test_a_config_file_sets_every_option_and_flags_and_environment_win(tmp_path: Path) -> None:
    (tmp_path / "topology.yaml").write_text(TOPOLOGY)
    from_file, from_flag = free_port(), free_port()
    config = tmp_path / "run.toml"
    config.write_text(
        f'source = "{tmp_path / "topology.yaml"}"\ninterval = "1m"\nhttp = "127.0.0.1:{from_file}"\n'
        f'db = "{tmp_path / "file.db"}"\nprune-after = "30d"\nevents = false\n'
    )
    proc = start(tmp_path, "--config", str(config))
    try:
        assert healthz(from_file), "the controller did not serve on the file's --http"
    finally:
        stop(proc)
    assert (tmp_path / "file.db").exists()
    env = {"CONSUL_RECONCILER_CONFIG": str(config), "CONSUL_RECONCILER_DB": str(tmp_path / "env.db")}
    proc = start(tmp_path, "--http", f"127.0.0.1:{from_flag}", env=env)  # the file from the environment
    try:
        assert healthz(from_flag), "the flag did not win over the file"
    finally:
        stop(proc)
    assert (tmp_path / "env.db").exists()  # the environment won over the file


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ("intervall: 5\n", ".yaml", "'intervall' is no option of run; the keys are: backoff-base,"),
        ("interval = \n", ".toml", "not valid TOML"),
        ("- a\n- b\n", ".yaml", "expected a mapping of option names to values"),
    ],
)
def test_a_bad_config_file_is_one_clear_error(tmp_path: Path, text: str, suffix: str, message: str) -> None:
    config = tmp_path / f"run{suffix}"
    config.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "run", "--config", str(config)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith(f"error: --config {config}: ")
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def received(sock: socket.socket, seconds: float) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return messages


def until_ready(sock: socket.socket, seconds: float) -> list[str]:
    """What was heard up to and including READY=1 (everything heard if it never came)."""
    messages: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not any(m.startswith("READY=1") for m in messages):
        messages += received(sock, 0.2)
    return messages


def test_systemd_hears_ready_then_watchdog_pings_then_stopping(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    (tmp_path / "topology.yaml").write_text(TOPOLOGY)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"}
    proc = start(
        tmp_path, str(tmp_path / "topology.yaml"), "--db", str(tmp_path / "a.db"), "--http", "off", env=env
    )
    try:
        # READY=1 once the first pass is done: seconds on a loaded machine (start-up, imports, a pass),
        # so waited for; then 4 s of watchdog pings, due every second
        heard = until_ready(notify_socket, 60.0)
        heard += received(notify_socket, 4.0)
    finally:
        log = stop(proc)
    after = received(notify_socket, 0.5)
    ready = [m for m in heard if m.startswith("READY=1")]
    assert len(ready) == 1, (heard, log)
    assert "STATUS=converging file:" in ready[0]
    assert heard.count("WATCHDOG=1") >= 2, heard  # every half period (1 s) while healthy
    assert "STOPPING=1" in after or "STOPPING=1" in heard, (heard, after)


def test_without_systemd_nothing_is_sent_and_the_unit_file_asks_for_what_is_sent() -> None:
    from reconciler.sdnotify import Notifier

    quiet = Notifier({})
    assert not quiet.enabled and quiet.watchdog_every is None and not quiet.send("READY=1")
    other = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_every is None  # the watchdog is another process's
    unit = (ROOT / "examples" / "consul-reconciler.service").read_text()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure", "--config"):
        assert line in unit, line


def test_the_example_configuration_holds_only_options_of_run() -> None:
    import typer

    from reconciler.cli.app import app
    from reconciler.cli.config_file import load_config

    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    settings = load_config(ROOT / "examples" / "run.toml", command)
    assert settings["source"] == "/etc/consul-reconciler/topology.yaml" and settings["prune_after"] == "90d"
    assert settings["backoff_max"] == 300
