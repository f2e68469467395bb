"""Running the real controller (`consul-reconciler run`) as a process against the test engines."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process that started it dies (prctl
    PR_SET_PDEATHSIG). A test session that is killed must not leave controllers running that go on
    converging the test engines under the next session (seen: every test of it then failed)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def stop_child(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM a server the tests started (sshd, Prometheus), SIGKILL if it outlasts ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class ControllerProcess:
    def __init__(
        self, topology: Path | str, db: Path | str, log: Path, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()/wait()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler.cli",
                "run",
                str(topology),
                "--db",
                str(db),
                "--http",
                f"127.0.0.1:{self.port}",
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env or dict(os.environ),
            preexec_fn=die_with_parent,
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self, timeout: float = 90) -> None:
        # ready once the first pass is done: against real Consul that pass creates the servers and
        # waits for their agents, and a create took 23 s on this 2-core machine when busy
        wait_for(lambda: (self.alive() and self.get("/readyz")[0] == 200) or self._died(), timeout, "/readyz")
        assert self.alive(), f"controller exited early:\n{self.log()}"

    def _died(self) -> bool:
        return not self.alive()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def stop_all(started: list[ControllerProcess], tail: int = 80) -> None:
    """Stop the controllers a test started and print the end of each log: pytest shows it when the
    test failed (a timed-out wait then says what the controller was doing), and drops it otherwise."""
    for number, proc in enumerate(started):
        proc.stop()
        lines = proc.log().splitlines()[-tail:]
        print(f"--- controller {number} ({proc.log_path.name}), last {len(lines)} lines ---")
        print("\n".join(lines))


def audit_rows(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Read the audit database directly (a second reader, as an operator's query would)."""
    if not Path(db).exists():
        return []  # not created yet
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return list(connection.execute(sql, params))
    except sqlite3.OperationalError:
        return []  # not migrated yet
    finally:
        connection.close()
