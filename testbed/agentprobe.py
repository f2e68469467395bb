"""Talking to a Consul agent stand-in over HTTP from the tests (the process or the container), and
running stand-ins as processes on the host (``Standin``)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from testbed.fleet import fleet_net

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
T = TypeVar("T")


def call(
    address: str, path: str, method: str = "GET", *, token: str | None = None, timeout: float = 3.0
) -> tuple[int, Any]:
    """(status, decoded JSON body, or the text when it is not JSON, or None when empty)."""
    headers = {"X-Consul-Token": token} if token else {}
    request = urllib.request.Request(f"http://{address}:8500{path}", method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, raw = int(response.status), response.read()
    except urllib.error.HTTPError as error:
        status, raw = int(error.code), error.read()
    if not raw:
        return status, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def eventually(
    probe: Callable[[], T], timeout: float = 6.0, what: str = "condition", interval: float = 0.05
) -> T:
    """The first truthy result of ``probe`` (AssertionError, OSError and KeyError count as not yet)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
            if result:
                return result
            last = result
        except (AssertionError, OSError, KeyError) as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s; last: {last!r}")
        time.sleep(interval)


STANDIN = Path(__file__).resolve().parent / "agent_standin.py"
TIMINGS = {
    "STANDIN_STABILIZE": "1",
    "STANDIN_GOSSIP_INTERVAL": "0.1",
    "STANDIN_FAILURE_TIMEOUT": "0.5",
    "STANDIN_RAFT_MULTIPLIER": "1",
}
HEARTBEAT = 1.0  # raft's HeartbeatTimeout at raft_multiplier 1
DRAIN = 5.0  # Consul's default leave_drain_time, the stand-in's default too
TOKEN = "b1gs3cr3t-management-token"
_next_octet = random.randrange(100, 200)


def _free_address() -> str:
    """A 127.0.10.x address (x in 100..199; another /24 with CR_FLEET_NET) whose port 8500 is free now."""
    global _next_octet
    for _ in range(100):
        address = f"{fleet_net()}.{_next_octet}"
        _next_octet = 100 + (_next_octet - 99) % 100
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the agent's listener does
            try:
                probe.bind((address, 8500))
            except OSError:
                continue
        return address
    raise RuntimeError(f"no free {fleet_net()}.100-199 address with port 8500")


class Standin:
    """One stand-in agent process."""

    def __init__(
        self, folder: Path, name: str, dc: str, *, server: bool = True, expect: int = 3, acl: bool = False
    ) -> None:
        self.name, self.dc, self.server, self.expect = name, dc, server, expect
        self.token = TOKEN if acl else None
        self.address = _free_address()
        self.data_dir = folder / name / "data"
        self.config_dir = folder / name / "config"
        self.log_path = folder / name / "stdout.log"
        self.data_dir.mkdir(parents=True)
        self.config_dir.mkdir(parents=True)
        if acl:  # Consul's own configuration keys: ACLs on, default deny, a management token
            acl_config = {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": TOKEN}}
            (self.config_dir / "acl.json").write_text(json.dumps({"acl": acl_config}))
        self.join: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        args = ["agent"] + (["-server", f"-bootstrap-expect={self.expect}"] if self.server else [])
        args += [f"-node={self.name}", f"-datacenter={self.dc}"] + [f"-retry-join={a}" for a in self.join]
        args += ["-client", self.address, "-advertise", self.address, "-ui"]
        return [*args, f"-data-dir={self.data_dir}", "-config-dir", str(self.config_dir)]

    def start(self) -> Standin:
        """Start the process and wait until it answers as itself (another address if its is taken)."""
        for _ in range(5):
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, str(STANDIN), *self.args()],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **TIMINGS},
                )
            if eventually(self._up, 5, f"{self.name} answering") == "up":
                return self
            if self.process.returncode != 0 and "cannot listen" in self.log():
                self.address = _free_address()  # taken meanwhile by another test run: try another
        raise AssertionError(f"{self.name} did not start:\n{self.log()}")

    def _up(self) -> str:
        assert self.process is not None
        if self.process.poll() is not None:
            return "exited"
        status, body = call(self.address, "/v1/agent/self", token=self.token)
        assert status == 200
        assert (body["Config"]["NodeName"], body["Config"]["Datacenter"]) == (self.name, self.dc)
        return "up"

    @property
    def node_id(self) -> str:
        return (self.data_dir / "node-id").read_text().strip()

    @property
    def rpc(self) -> str:
        return f"{self.address}:8300"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def get(self, path: str) -> tuple[int, Any]:
        return call(self.address, path, token=self.token)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def leader_of(agents: Sequence[Standin]) -> Standin:
    """The agent all of ``agents`` name as leader (waits until they agree on one of them)."""

    def agreed() -> str:
        answers = {a.get("/v1/status/leader")[1] for a in agents}
        return answers.pop() if len(answers) == 1 and answers <= {a.rpc for a in agents} else ""

    # a bound for a wait, not a speed check: a first election on a busy machine took longer than 6 s
    rpc = eventually(agreed, timeout=30.0, what="one leader agreed by all")
    return next(a for a in agents if a.rpc == rpc)


def start_cluster(make: Callable[..., Standin], count: int = 3, **kwargs: Any) -> list[Standin]:
    servers = [make(f"server{i}", expect=count, **kwargs) for i in range(1, count + 1)]
    for server in servers:
        server.join = [s.address for s in servers if s is not server]
    for server in servers:
        server.start()
    leader_of(servers)
    return servers
