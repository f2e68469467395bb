"""The Docker simulator of the benchmarks (bench/dockersim.py) against a real engine.

The same scenario runs twice, through the product's own code paths (run_pass and its executor,
observe_host, the mounted-config reads, the EventWatcher): once on a real engine of the test fleet and
once on the simulator, given the real engine's images (their inspect documents, so image ids, labels,
entrypoints and environments are the same). Everything the product reads is recorded and the two
records must be equal once the ids, times and pids are replaced by their order of appearance: the
pass outcomes, every ObservedContainer field (a hand-run container's inspect and image environment
included), the inspect fields the executor and adoption read, the files read back through archives,
the events (Action and Actor attributes) from the raw event stream and as the EventWatcher saw them,
and the errors (exception class, status, message) for a missing container and image, a name in use, a
running container removed without force, a container killed twice, and a bind mount with no source.
A difference means the simulator no longer answers as Docker does, and the benchmarks' figures drift.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from desired_state.load import load_topology
from desired_state.render import render
from desired_state.spec import Endpoint
from reconciler import labels as L
from reconciler.containers import ActionError, ContainerOps, ExecOptions
from reconciler.engines import Connections
from reconciler.mounted import HostFileMissing
from reconciler.mounted_docker import host_files, read_folder
from reconciler.observe import observe_host
from reconciler.one_pass import PassOptions, run_pass
from reconciler.store import AuditLog
from reconciler.triggers import WATCHED_EVENTS, EventWatcher
from testbed.fleet import STANDIN_CONSUL_1, STANDIN_CONSUL_2, STANDIN_REGISTRATOR_1, Engine

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = "contract"
HOST = "h1"
GOSSIP_ENV = "CR_CONTRACT_GOSSIP"
IMAGES = (STANDIN_CONSUL_1, STANDIN_CONSUL_2, STANDIN_REGISTRATOR_1)
MISSING_IMAGE = "consul-reconciler-standin/absent:0"
WAIT = 10.0

Record = dict[str, Any]


# --------------------------------------------------------------------------------------------------
# The simulator, given the real engine's images


@pytest.fixture
def simulator(tmp_path: Path, clean_fleet: list[Engine]) -> Iterator[str]:
    """A one-engine simulator with the real engine's stand-in images; its engine's URL."""
    with contextlib.closing(clean_fleet[0].client()) as client:
        documents = [client.api.inspect_image(tag) for tag in IMAGES]
    image_file = tmp_path / "images.json"
    image_file.write_text(json.dumps(documents))
    folder = tmp_path / "sim"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.dockersim",
            "--hosts",
            "1",
            "--dir",
            str(folder),
            "--images",
            "--pullable",
            "--image-file",
            str(image_file),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline().decode() if readable else ""
        assert line.startswith("{") and json.loads(line)["ready"], f"the simulator did not start: {line!r}"
        yield f"unix://{folder}/host00000.sock"
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------------------------------
# The scenario, through the product's code


def document(url: str, tmp: Path, consul_image: str, *, host: str = HOST) -> dict[str, Any]:
    """One server host on ``url``, with a gossip key (a secret file written in) and a config file
    mounted from the host (read through a view container, recorded through an archive). Another
    ``host`` name: the first host has left the topology (its containers are removed)."""
    return {
        "cluster": CLUSTER,
        "consul": {
            "image": consul_image,
            "encrypt": {"env": GOSSIP_ENV},
            "config_files": [{"host_path": str(tmp / "extra.json")}],
        },
        "registrator": {"image": STANDIN_REGISTRATOR_1},
        "rollout": {"gates": False},
        "acknowledge": [] if host == HOST else ["remove-servers"],
        "hosts": [
            {
                "name": host,
                "docker": url if host == HOST else f"unix://{tmp}/{host}-nowhere.sock",
                "advertise": "127.0.0.1",
                "role": "server",
                "data_dir": str(tmp / "data"),
                "timeout": 30,
            }
        ],
    }


class Scenario:
    """The product's operations on one engine, and what it read."""

    def __init__(self, url: str, tmp: Path, workdir: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.endpoint = Endpoint(url=url, timeout=30)
        self.connections = Connections()
        workdir.mkdir()
        self.audit = AuditLog(str(workdir / "audit.db"))
        self.client = docker.DockerClient(base_url=url, version="1.41", timeout=30)
        self.record: Record = {}
        self.seen: list[tuple[str, str]] = []  # what the EventWatcher passed on
        self.started = time.time()
        self.watcher = EventWatcher(HOST, self.endpoint, CLUSTER, self._on_event, window=2.0, grace=2.0)

    def _on_event(self, host: str, action: str, event: Mapping[str, Any]) -> None:
        name = str((event.get("Actor") or {}).get("Attributes", {}).get("name", "?"))
        self.seen.append((action, name))

    def close(self) -> None:
        self.watcher.stop()
        self.connections.close()
        self.audit.close()
        self.client.close()

    def run(self) -> Record:
        self.watcher.start()
        assert self.watcher.connected.wait(WAIT), "the event stream did not connect"
        self.converge()
        self.change()
        self.repair()
        self.hand_run()
        self.errors()
        self.removal()
        self.events()
        return self.record

    def apply(self, step: str, doc: dict[str, Any]) -> None:
        loaded = load_topology(yaml.safe_dump(doc).encode())
        options = PassOptions(exec=ExecOptions(stop_timeout=5, environ={GOSSIP_ENV: gossip_key()}))
        result = run_pass(
            loaded, source="contract", connections=self.connections, audit=self.audit, options=options
        )
        applied = result.applied.results if result.applied else []
        outcomes = [(r.action.kind.value, r.action.name, r.status, r.error) for r in applied]
        self.record[f"{step}: pass"] = {
            "status": result.status,
            "refused": result.refused,
            "actions": outcomes,
        }
        self.observe(step)

    def observe(self, step: str, wanted: tuple[str, ...] = ("consul", "registrator")) -> None:
        seen = observe_host(self.connections, HOST, self.endpoint, wanted)
        assert seen.reachable, seen.error
        self.record[f"{step}: observed"] = {
            "managed": sorted((observed(c) for c in seen.managed), key=lambda c: c["name"]),
            "others": sorted((observed(c) for c in seen.others), key=lambda c: c["name"]),
        }
        for container in (*seen.managed, *seen.others):
            self.record[f"{step}: inspect {container.name}"] = inspected(
                self.client.api.inspect_container(container.id)
            )
        agent = next((c for c in seen.managed if c.name == "consul"), None)
        if agent is not None:  # the config folder as the product reads it back
            files = read_folder(self.client.api, agent.id)
            self.record[f"{step}: files"] = {path: data.decode() for path, data in sorted(files.items())}

    def converge(self) -> None:
        (self.tmp / "extra.json").write_text(json.dumps({"node_meta": {"zone": "z1"}}))
        self.apply("converge", document(self.url, self.tmp, STANDIN_CONSUL_1))

    def change(self) -> None:
        (self.tmp / "extra.json").write_text(json.dumps({"node_meta": {"zone": "z2"}}))
        self.observe("file edited")  # the edit seen through the view container
        self.apply("change", document(self.url, self.tmp, STANDIN_CONSUL_2))

    def repair(self) -> None:
        self.client.api.kill("registrator")
        wait_for(lambda: not self.client.api.inspect_container("registrator")["State"]["Running"], "exit")
        self.observe("killed")
        self.apply("repair", document(self.url, self.tmp, STANDIN_CONSUL_2))

    def hand_run(self) -> None:
        """A container started by hand under a desired name: observed through the name filter, inspected,
        its image's environment read; the pass blocks the name."""
        self.client.api.remove_container("registrator", force=True)
        made = self.client.api.create_container(
            STANDIN_REGISTRATOR_1,
            ["-internal", "consul://127.0.0.1:8500"],
            name="registrator",
            environment=["FROM_HAND=1"],
            host_config=self.client.api.create_host_config(
                network_mode="host", restart_policy={"Name": "always"}
            ),
        )
        self.client.api.start(made["Id"])
        self.apply("hand-run", document(self.url, self.tmp, STANDIN_CONSUL_2))
        self.client.api.remove_container(made["Id"], force=True)

    def errors(self) -> None:
        api, found = self.client.api, {}
        other = api.create_container(
            STANDIN_CONSUL_1, ["agent"], name="other", host_config=api.create_host_config(network_mode="none")
        )["Id"]
        api.start(other)
        calls: dict[str, Callable[[], Any]] = {
            "inspect a missing container": lambda: api.inspect_container("missing"),
            "inspect a missing image": lambda: self.client.images.get(MISSING_IMAGE),
            "create from a missing image": lambda: self.client.containers.create(MISSING_IMAGE, name="x"),
            "create under a name in use": lambda: api.create_container(STANDIN_CONSUL_1, name="consul"),
            "remove a running container": lambda: api.remove_container(other),
            "rename onto a name in use": lambda: api.rename(other, "consul"),
            "start a running container": lambda: api.start(other),
            "kill a container twice": lambda: (api.kill(other), api.kill(other)),
            "stop a stopped container": lambda: api.stop(other),
            "remove a missing container": lambda: api.remove_container("missing", force=True),
            "a mounted file missing on the host": lambda: host_files(
                api, "consul", STANDIN_CONSUL_2, {"/consul/config/gone.json": str(self.tmp / "gone.json")}
            ),
            "an image absent and no pull": lambda: ContainerOps(
                CLUSTER, ExecOptions(pull=False)
            ).ensure_image(self.client, load_spec(self.url, self.tmp, MISSING_IMAGE)),
            "an archive of a missing path": lambda: read_folder(api, other, "/nowhere/at/all.json"),
        }
        for what, call in calls.items():
            found[what] = outcome(call)
        api.remove_container(other, force=True)
        self.record["errors"] = found

    def removal(self) -> None:
        self.apply("removal", document(self.url, self.tmp, STANDIN_CONSUL_2, host="h2"))

    def events(self) -> None:
        """Every event of our containers since the start, from the raw stream; and the EventWatcher's."""
        raw = self.client.api.events(
            since=self.started,
            until=time.time(),
            decode=True,
            filters={"type": "container", "label": [f"{L.MANAGED_BY}={CLUSTER}"]},
        )
        documents = list(raw)
        self.record["events"] = [event_fields(e) for e in documents]
        expected = [
            (e["Action"], e["Actor"]["Attributes"]["name"])
            for e in documents
            if e["Action"] in WATCHED_EVENTS
        ]
        with contextlib.suppress(AssertionError):
            wait_for(lambda: self.seen[-len(expected) :] == expected, "the watcher's events")
        self.record["watcher"] = list(self.seen)


# --------------------------------------------------------------------------------------------------
# What is compared


def gossip_key() -> str:
    return base64.b64encode(b"k" * 32).decode()


def load_spec(url: str, tmp: Path, image: str, role: str = "server") -> Any:
    """The spec of the document's agent (or Registrator) on the host."""
    loaded = load_topology(yaml.safe_dump(document(url, tmp, image)).encode())
    return next(s for s in render(loaded.topology).hosts[0].specs if s.role == role)


def observed(container: Any) -> Record:
    found = container.found
    return {
        "id": container.id,
        "name": container.name,
        "image": container.image,
        "state": container.state,
        "labels": container.labels,
        "command": container.command,
        "image_env": list(container.image_env),
        "found": None if found is None else dataclasses.asdict(found),
        "config_edits": [str(e) for e in container.config_edits],
    }


def inspected(attrs: Mapping[str, Any]) -> Record:
    """What the product reads of an inspect (containers.py, leave.py, adoption's FoundContainer)."""
    config, host, state = attrs["Config"], attrs["HostConfig"], attrs["State"]
    return {
        "Id": attrs["Id"],
        "Name": attrs["Name"],
        "Image": attrs["Image"],
        "RestartCount": attrs["RestartCount"],
        "Config": {k: config.get(k) for k in ("Image", "Cmd", "Entrypoint", "Env", "Labels", "Hostname")},
        "HostConfig": {
            "NetworkMode": host.get("NetworkMode"),
            "RestartPolicy": host.get("RestartPolicy", {}).get("Name"),
            "PortBindings": host.get("PortBindings"),
        },
        "Mounts": sorted(
            ({k: m.get(k) for k in ("Type", "Source", "Destination", "RW")} for m in attrs["Mounts"]),
            key=lambda m: str(m["Destination"]),
        ),
        "State": {
            k: state.get(k)
            for k in (
                "Status",
                "Running",
                "Paused",
                "Restarting",
                "ExitCode",
                "Pid",
                "StartedAt",
                "FinishedAt",
            )
        },
    }


def event_fields(event: Mapping[str, Any]) -> Record:
    attributes = event["Actor"]["Attributes"]
    return {
        "Type": event["Type"],
        "Action": event["Action"],
        "status": event.get("status"),
        "id": event.get("id"),
        "from": event.get("from"),
        "Actor": {"ID": event["Actor"]["ID"], "Attributes": attributes},
        "time": isinstance(event["time"], int) and isinstance(event["timeNano"], int),
    }


def outcome(call: Callable[[], Any]) -> Record:
    try:
        call()
    except (docker.errors.APIError, ActionError, HostFileMissing) as exc:
        status = getattr(exc, "status_code", None)
        message = exc.explanation if isinstance(exc, docker.errors.APIError) else str(exc)
        return {"error": type(exc).__name__, "status": status, "message": message}
    return {"error": None}


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
HEX_ID = re.compile(r"\b[0-9a-f]{64}\b|\b[0-9a-f]{12}\b")


def normalised(record: Any) -> Any:
    """Ids by order of appearance, times by their form, pids by whether there is one."""
    names: dict[str, str] = {}

    def text(value: str) -> str:
        if RFC3339.match(value):
            return "<zero time>" if value.startswith("0001-") else "<time>"

        def name(match: re.Match[str]) -> str:
            full = match.group(0)
            key = next((k for k in names if k.startswith(full)), full)
            return names.setdefault(key, f"<id {len(names) + 1}>")

        return HEX_ID.sub(name, value)

    def walk(value: Any, key: str = "") -> Any:
        if key == "Pid" and isinstance(value, int):
            return "<pid>" if value else 0
        if isinstance(value, dict):
            return {text(str(k)): walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        return text(value) if isinstance(value, str) else value

    return walk(record)


def differences(real: Any, simulated: Any, where: str = "") -> list[str]:
    """Each leaf that differs, by its path: ``change: inspect consul/State/ExitCode: 0 != 137``."""
    if isinstance(real, dict) and isinstance(simulated, dict):
        return [
            line
            for key in sorted(set(real) | set(simulated), key=str)
            for line in differences(
                real.get(key, "<absent>"), simulated.get(key, "<absent>"), f"{where}/{key}"
            )
        ]
    if isinstance(real, list) and isinstance(simulated, list) and len(real) == len(simulated):
        return [line for i, (r, s) in enumerate(zip(real, simulated, strict=True)) for line in
                differences(r, s, f"{where}[{i}]")]  # fmt: skip
    if real != simulated:
        return [
            f"{where.lstrip('/')}:\n  real:      {json.dumps(real)}\n  simulated: {json.dumps(simulated)}"
        ]
    return []


def run_on(url: str, tmp: Path, label: str) -> Record:
    scenario = Scenario(url, tmp, tmp / label)
    try:
        # the engine's own socket (Registrator mounts it) is the one thing that differs by design
        text = json.dumps(scenario.run()).replace(url.removeprefix("unix://"), "<the engine's socket>")
        registrator = load_spec(url, tmp, STANDIN_CONSUL_2, role="registrator").spec_hash()
        text = text.replace(registrator, "<registrator spec hash>").replace(registrator[:8], "<hash8>")
        record: Record = normalised(json.loads(text))
        return record
    finally:
        scenario.close()


def test_the_simulator_answers_the_product_as_a_real_engine_does(
    clean_fleet: list[Engine], simulator: str, tmp_path: Path
) -> None:
    # The same folder for both runs: the data dir and the mounted file are part of the labels compared.
    os.environ.pop("DOCKER_HOST", None)
    shared = tmp_path / "shared"
    shared.mkdir()
    real = run_on(clean_fleet[0].url, shared, "real")
    simulated = run_on(simulator, shared, "simulated")
    assert real["converge: pass"]["status"] == "succeeded", real["converge: pass"]
    assert any(e["Action"] == "destroy" for e in real["events"]), "the real engine's events were not read"
    problems = differences(real, simulated)
    if problems:  # both records whole, for a closer look
        (tmp_path / "real.json").write_text(json.dumps(real, indent=1, sort_keys=True))
        (tmp_path / "simulated.json").write_text(json.dumps(simulated, indent=1, sort_keys=True))
    assert not problems, "the simulator differs from Docker:\n" + "\n".join(problems)
