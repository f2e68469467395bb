"""A real Prometheus server (Debian's prometheus package) on loopback, scraping test controllers.

It listens on ``<fleet net>.6`` (127.0.10.6 unless CR_FLEET_NET says otherwise) on a free port, keeps
its data in the test's folder, scrapes every second under job="consul-reconciler" (the job the
project's alert rules and dashboard expect) and evaluates the given rule files every second. It runs
as a child of the test process and dies with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.controller_harness import die_with_parent, stop_child
from testbed.fleet import FleetError, fleet_net

PROMETHEUS = "prometheus"
ADDRESS_OCTET = 6  # in the fleet's /24: engines 1-5, the ssh gateway 7, the image test 8, TLS engine 9
JOB = "consul-reconciler"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


@dataclass
class PrometheusServer:
    root: Path
    address: str
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "prometheus.log"

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a Prometheus HTTP API answer (``/api/v1/...``); raises on an error answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with _OPENER.open(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus refused {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (a vector: one entry per series)."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else [data]
        return result


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


def start_prometheus(root: Path, targets: Sequence[str], rule_files: Sequence[Path] = ()) -> PrometheusServer:
    """Prometheus scraping ``targets`` (host:port) every second under job="consul-reconciler"."""
    binary = shutil.which(PROMETHEUS)
    if binary is None:
        raise FleetError("prometheus is missing (scripts/bootstrap.sh installs Debian's package)")
    root.mkdir(parents=True, exist_ok=True)
    address = f"{fleet_net()}.{ADDRESS_OCTET}"
    server = PrometheusServer(root, address, _free_port(address))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
    }
    config_file = root / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    with open(server.log_path, "ab") as log:
        server.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address={address}:{server.port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=die_with_parent,
        )
    deadline = time.monotonic() + 30
    while True:
        if server.process.poll() is not None:
            tail = server.log_path.read_text()[-800:]
            raise FleetError(f"prometheus exited at start ({server.log_path}): {tail}")
        try:
            with _OPENER.open(f"{server.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_prometheus(server)
            raise FleetError(f"prometheus was not ready within 30 s ({server.log_path})")
        time.sleep(0.2)


def stop_prometheus(server: PrometheusServer) -> None:
    stop_child(server.process, timeout=15)
