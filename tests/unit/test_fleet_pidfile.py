"""The test fleet's reading of a dockerd pidfile left by an earlier run (testbed/fleet.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from testbed.fleet import Engine


def test_a_pidfile_naming_a_recycled_pid_is_not_taken_for_a_running_dockerd() -> None:
    with tempfile.TemporaryDirectory(prefix="crpid") as root:  # short: the engine's socket paths
        _check(Engine.at(1, Path(root)))


def _check(engine: Engine) -> None:
    engine.state_dir.mkdir(parents=True)
    # pid 2 is the kernel's kthreadd: a live pid whose cmdline is empty, like the kworker that once
    # held a killed dockerd's pid and made the fleet wait 60 s for a /_ping that could never come
    engine.pidfile.write_text("2\n")
    assert Path("/proc/2/cmdline").read_bytes() == b""
    assert engine.pid() is None
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as other:
        try:
            engine.pidfile.write_text(f"{other.pid}\n")  # a live process, not a dockerd
            assert engine.pid() is None
        finally:
            other.kill()
    engine.pidfile.write_text(f"{os.getpid()}\n")
    assert engine.pid() is None
