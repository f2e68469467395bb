"""The CLI and the engines, for integration tests: a topology over the test engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import yaml

from testbed.fleet import Engine, fleet_topology
from testbed.real_consul import ensure_images

LABEL = "io.consul-reconciler"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class Fleet:
    """A topology over the test engines plus helpers to run the CLI and look at the engines."""

    def __init__(self, engines: Sequence[Engine], tmp: Path, cluster: str = "itest") -> None:
        self.engines = list(engines)
        self.tmp = tmp
        self.db = tmp / "audit.db"
        self.file = tmp / "topology.yaml"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_RECONCILER")}
        self.doc: dict[str, Any] = fleet_topology(self.engines, tmp, cluster)
        self.write()

    def use_real_consul(self, *, acl: bool = False) -> tuple[str, str]:
        """Make the agents real Consul (testbed/real_consul.py), each bound to its host's loopback address
        (real agents on one machine clash on 0.0.0.0); returns the two image tags (old, new)."""
        old, new = ensure_images(self.engines, acl=acl)
        self.doc["consul"]["image"] = old
        for host in self.doc["hosts"]:
            host["bind"] = host["advertise"]
        self.write()
        return old, new

    def write(self) -> None:
        self.write_bytes(yaml.safe_dump(self.doc, sort_keys=False).encode())

    def write_bytes(self, data: bytes) -> None:
        """The document written whole (a new file renamed over it), as an editor saves: a controller
        polling the file never reads it half-written."""
        fresh = self.file.with_name(self.file.name + ".new")
        fresh.write_bytes(data)
        fresh.replace(self.file)

    def cli(self, *args: str) -> Run:
        proc = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=180,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def apply(self, *extra: str) -> Run:
        return self.cli(
            "apply", str(self.file), "--db", str(self.db), "--json", "--stop-timeout", "5", *extra
        )

    def plan(self, *extra: str) -> Run:
        return self.cli("plan", str(self.file), "--db", str(self.db), "--json", *extra)

    def audit(self, *extra: str) -> list[dict[str, Any]]:
        run = self.cli("audit", "--db", str(self.db), "--json", "--limit", "1000", *extra)
        assert run.code == 0, run.stderr
        rows: list[dict[str, Any]] = run.json()["actions"]
        return rows

    def containers(self, engine: Engine) -> dict[str, dict[str, Any]]:
        client = engine.client()
        found: dict[str, dict[str, Any]] = {}
        try:
            for summary in client.api.containers(all=True):
                try:  # a container may go between the list and its inspect (the controller at work)
                    attrs = client.api.inspect_container(summary["Id"])
                except docker.errors.NotFound:
                    continue
                found[attrs["Name"].lstrip("/")] = attrs
            return found
        finally:
            client.close()

    def wait_consul_healthy(self, servers: int | None = None, timeout: float = 60) -> None:
        """Until the first server agent's autopilot calls the cluster healthy (with ``servers`` servers,
        when given): a new cluster elects its first leader seconds after its containers run."""
        address = self.doc["hosts"][0].get("client_address") or self.doc["hosts"][0]["advertise"]
        token = self.env.get("CONSUL_HTTP_TOKEN")
        headers = {"X-Consul-Token": token} if token else {}

        def healthy() -> bool:
            request = urllib.request.Request(
                f"http://{address}:8500/v1/operator/autopilot/health", headers=headers
            )
            try:
                with _OPENER.open(request, timeout=2) as response:
                    body = json.loads(response.read())
            except (OSError, ValueError):
                return False
            return bool(body["Healthy"]) and (servers is None or len(body["Servers"] or []) == servers)

        deadline = time.monotonic() + timeout
        while not healthy():
            if time.monotonic() > deadline:
                raise AssertionError(f"the Consul servers were not healthy within {timeout:.0f}s")
            time.sleep(0.1)

    def ids(self) -> dict[tuple[str, str], str]:
        return {(e.name, n): a["Id"] for e in self.engines for n, a in self.containers(e).items()}
