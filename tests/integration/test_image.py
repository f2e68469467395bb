"""The controller's own image: built from the repository's Dockerfile, run against a real engine.

No registry is reachable, so the image is built ``FROM`` a local Debian 12 + Python base made with
debootstrap (testbed/baseimage.py; cached, about 40 s the first time) instead of python:3.11-slim.
The build's ``pip install`` fetches the dependencies from PyPI: the engines run with
``--bridge=none``, so the build uses the host's network (``network_mode="host"``).

The container then does what it does in production: it gets the engine's socket mounted at
/var/run/docker.sock, host networking and a topology file at /etc/consul-reconciler/topology.yaml
whose host is that same engine, reached through the mounted socket. The assertions are on the
engine's own state, not on the controller's word.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from testbed.baseimage import BASE_IMAGE, ensure_base_image
from testbed.fleet import AGENT_IMAGE_1, STANDIN_REGISTRATOR_1, Engine, FleetError, fleet_net
from testbed.sshgateway import start_ssh_gateway, stop_ssh_gateway

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "consul-reconciler-test/controller:dev"
BUILD_STAGE = "build"  # the Dockerfile's first stage (the venv, before it is copied out)
BUILD_STAGE_TAG = "consul-reconciler-test/controller:build-stage"
LABEL = "io.consul-reconciler"
CLUSTER = "imgtest"
APP_UID = 10001
STATE_DIR = "/var/lib/consul-reconciler"
CONTAINER_TOPOLOGY = "/etc/consul-reconciler/topology.yaml"
CONTAINER_SOCKET = "/var/run/docker.sock"
CONTROLLER_NAME = "consul-reconciler-controller"
HEALTHCHECK_TEST = [
    "CMD",
    "python3",
    "-c",
    "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9321/healthz', timeout=3)",
]

# What the controller container is told to do (the image's ENTRYPOINT is consul-reconciler): the
# long-running controller, serving /healthz on a free loopback port of the host (the container
# shares the host's network). The test waits for /healthz and for the engine to converge.
HEALTH_PORT = 29321
HEALTH_HOST = f"{fleet_net()}.8"  # a loopback address of this test session's own (CR_FLEET_NET)
CONTROLLER_COMMAND: tuple[str, ...] = (
    "run",
    CONTAINER_TOPOLOGY,
    "--interval",
    "600",
    "--http",
    f"{HEALTH_HOST}:{HEALTH_PORT}",
)
HEALTHZ_URL = f"http://{HEALTH_HOST}:{HEALTH_PORT}/healthz"
BUILD_TIMEOUT = 600
CONVERGE_TIMEOUT = 120.0


def _long_client(engine: Engine) -> docker.DockerClient:
    return docker.DockerClient(base_url=engine.url, timeout=BUILD_TIMEOUT)


def build_controller_image(engine: Engine, base: str = BASE_IMAGE, tag: str = IMAGE) -> dict[str, Any]:
    """``docker build --build-arg BASE=... --network host -t TAG .`` of the repository; the image's attrs.

    The Dockerfile's ``build`` stage is built first under a tag of its own (BUILD_STAGE_TAG; the
    full build then takes it from the cache), so that images a rebuild replaces, of either stage,
    are known by id and removed: repeated runs do not pile up images on the engine.
    """
    with contextlib.closing(_long_client(engine)) as client:
        stages = ((BUILD_STAGE, BUILD_STAGE_TAG), (None, tag))
        previous: dict[str, str] = {}
        for _, stage_tag in stages:
            with contextlib.suppress(docker.errors.ImageNotFound):
                previous[stage_tag] = client.images.get(stage_tag).id
        for target, stage_tag in stages:
            output: list[str] = []
            for chunk in client.api.build(
                path=str(REPO_ROOT),  # the SDK applies .dockerignore, as the CLI does
                dockerfile="Dockerfile",
                tag=stage_tag,
                target=target,
                buildargs={"BASE": base},
                network_mode="host",
                rm=True,
                forcerm=True,
                decode=True,
            ):
                if "error" in chunk:
                    raise FleetError(
                        f"building {stage_tag} failed: {chunk['error']}\n{''.join(output)[-4000:]}"
                    )
                output.append(str(chunk.get("stream", "")))
        for stage_tag, old_id in previous.items():
            if client.images.get(stage_tag).id != old_id:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(old_id)
        return dict(client.images.get(tag).attrs)


@pytest.fixture(scope="module")
def controller_image(fleet: list[Engine]) -> dict[str, Any]:
    """The controller image, built on host1 from the local base; its ``docker inspect`` attrs."""
    engine = fleet[0]
    try:
        ensure_base_image([engine])
        return build_controller_image(engine)
    except (FleetError, docker.errors.DockerException) as error:
        pytest.fail(f"the controller image could not be built on {engine.name}: {error}", pytrace=False)


def test_image_config_healthcheck_user_entrypoint(controller_image: dict[str, Any]) -> None:
    config = controller_image["Config"]
    assert config["Healthcheck"]["Test"] == HEALTHCHECK_TEST
    assert config["User"] == f"{APP_UID}:{APP_UID}"
    assert config["Entrypoint"] == ["consul-reconciler"]
    assert config["Cmd"] == ["run", CONTAINER_TOPOLOGY]
    assert "9321/tcp" in config["ExposedPorts"]
    assert STATE_DIR in config["Volumes"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["CONSUL_RECONCILER_DB"] == f"{STATE_DIR}/audit.db"
    assert env["PATH"].startswith("/opt/consul-reconciler/bin:")
    assert env["HOME"] == STATE_DIR  # where ssh:// hosts' known_hosts and key are read (README)


def test_image_runs_as_reconciler_without_sources(
    fleet: list[Engine], controller_image: dict[str, Any]
) -> None:
    script = (
        "id; stat -c '%u:%g %a' " + STATE_DIR + "; "
        "test ! -e /src && echo no-src; "
        "test ! -e /opt/consul-reconciler/bin/pip && echo no-pip; "
        "consul-reconciler version"
    )
    with contextlib.closing(fleet[0].client()) as client:
        output = client.containers.run(
            IMAGE, entrypoint=["/bin/sh", "-c"], command=[script], network_mode="none", remove=True
        ).decode()
    lines = output.splitlines()
    assert lines[0].startswith(f"uid={APP_UID}(reconciler) gid={APP_UID}(reconciler)"), output
    assert lines[1] == f"{APP_UID}:{APP_UID} 750", output
    assert lines[2:4] == ["no-src", "no-pip"], output
    assert lines[4].strip(), output  # the version


def test_image_installs_exactly_the_pinned_versions(
    fleet: list[Engine], controller_image: dict[str, Any]
) -> None:
    """The build is reproducible: every distribution in the image's venv is the one constraints.txt
    pins (the versions the suite ran on), whatever PyPI's newest is on the day of the build."""
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = pinned.strip()
    script = (
        "import importlib.metadata as m\n"
        "for d in m.distributions(): print(d.metadata['Name'].lower().replace('_', '-'), d.version)"
    )
    with contextlib.closing(fleet[0].client()) as client:
        output = client.containers.run(
            IMAGE, entrypoint=["python3", "-c"], command=[script], network_mode="none", remove=True
        ).decode()
    installed = dict(line.split() for line in output.splitlines())
    assert installed.pop("consul-reconciler")
    assert installed, output
    unpinned = sorted(set(installed) - set(pins))
    assert not unpinned, f"in the image but not pinned in constraints.txt: {unpinned}"
    assert {name: installed[name] for name in installed} == {name: pins[name] for name in installed}


# --------------------------------------------------------------------------------------------------
# The controller in a container, managing the engine it runs on


def _topology(engine: Engine, data_dir: Path) -> dict[str, Any]:
    return {
        "cluster": CLUSTER,
        "consul": {"image": AGENT_IMAGE_1},
        "registrator": {"image": STANDIN_REGISTRATOR_1},
        # gated, as in production: the controller's container (host network) asks the agent's HTTP API
        "rollout": {"gates": True, "stabilization": 1},
        "hosts": [
            {
                "name": engine.name,
                # The engine's socket as the container sees it (mounted from the engine's host).
                "docker": f"unix://{CONTAINER_SOCKET}",
                "advertise": engine.address,
                "client_address": engine.address,
                "role": "server",
                "data_dir": str(data_dir),
                "timeout": 5,
            }
        ],
    }


def wait_for_healthz(url: str = HEALTHZ_URL, timeout: float = 60.0) -> None:
    """Poll ``url`` (loopback only) until it answers 2xx; raise AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
                last = response.status
        except (urllib.error.URLError, OSError) as error:
            last = error
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 2xx within {timeout:.0f} s (last: {last})")


def _managed(engine: Engine) -> dict[str, dict[str, Any]]:
    with contextlib.closing(engine.client()) as client:
        return {
            c.name: c.attrs
            # the running controller may remove a container between the list and its inspect
            for c in client.containers.list(
                all=True, filters={"label": f"{LABEL}.managed-by"}, ignore_removed=True
            )
        }


def wait_converged(engine: Engine, timeout: float) -> dict[str, dict[str, Any]]:
    """The managed containers once ``consul`` and ``registrator`` both run (or the last seen)."""
    deadline = time.monotonic() + timeout
    while True:
        found = _managed(engine)
        running = {name for name, attrs in found.items() if attrs["State"]["Running"]}
        if {"consul", "registrator"} <= running or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@contextlib.contextmanager
def controller_container(engine: Engine, tmp: Path) -> Iterator[tuple[Any, Path]]:
    """The controller container on ``engine``, started with CONTROLLER_COMMAND; removed on exit.

    Yields the container and the host folder mounted as its state volume (the audit database).
    """
    topology = tmp / "topology.yaml"
    topology.write_text(yaml.safe_dump(_topology(engine, tmp / f"data-{engine.name}"), sort_keys=False))
    topology.chmod(0o644)
    state = tmp / "state"
    state.mkdir()
    os.chown(state, APP_UID, APP_UID)  # the image's user writes the audit database here
    # The container runs as the image's non-root user (uid 10001), given the group of the engine's
    # socket (root:docker, or root:root, mode 0660 here), exactly as the Dockerfile documents for
    # production: docker run --group-add "$(stat -c %g /var/run/docker.sock)". `--user 0` would
    # work as well; either way the socket makes the controller root-equivalent on that host.
    socket_gid = engine.socket_path.stat().st_gid
    client = engine.client()
    container = client.containers.run(
        IMAGE,
        command=list(CONTROLLER_COMMAND),
        name=CONTROLLER_NAME,
        detach=True,
        network_mode="host",
        group_add=[str(socket_gid)],
        volumes={
            str(engine.socket_path): {"bind": CONTAINER_SOCKET, "mode": "rw"},
            str(topology): {"bind": CONTAINER_TOPOLOGY, "mode": "ro"},
            str(state): {"bind": STATE_DIR, "mode": "rw"},
        },
    )
    try:
        yield container, state
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True, v=True)
        client.close()


def test_controller_container_converges_its_engine(
    clean_fleet: list[Engine], controller_image: dict[str, Any], tmp_path: Path
) -> None:
    engine = clean_fleet[0]
    with controller_container(engine, tmp_path) as (container, state):
        if CONTROLLER_COMMAND[0] == "run":
            wait_for_healthz()
            found = wait_converged(engine, CONVERGE_TIMEOUT)
            # the containerised controller also repairs drift, through the mounted socket's events
            with contextlib.closing(engine.client()) as client:
                client.containers.get("registrator").remove(force=True)
            # the same bound as the first convergence: on a loaded machine a call may pass the host's 5 s
            # timeout, and the repair is then retried after a backoff
            found = wait_converged(engine, CONVERGE_TIMEOUT)
            container.reload()
            assert container.status == "running", container.logs().decode(errors="replace")
            # the console's templates are in the installed package, not only in the source tree
            console = HEALTHZ_URL.removesuffix("/healthz") + "/ui"
            with urllib.request.urlopen(console, timeout=10) as page:
                assert page.status == 200 and b'data-host="' in page.read()
        else:
            status = container.wait(timeout=CONVERGE_TIMEOUT)
            logs = container.logs().decode(errors="replace")
            assert status["StatusCode"] == 0, f"{' '.join(CONTROLLER_COMMAND)} exited {status}:\n{logs}"
            found = _managed(engine)
        logs = container.logs().decode(errors="replace")
        # The controller's own container is left alone: the topology does not manage it.
        with contextlib.closing(engine.client()) as client:
            names = {c.name for c in client.containers.list(all=True, ignore_removed=True)}
        assert names == {"consul", "registrator", CONTROLLER_NAME}, logs

    assert set(found) == {"consul", "registrator"}, logs
    for name, attrs in found.items():
        assert attrs["State"]["Running"] is True, (name, attrs["State"], logs)
        assert attrs["HostConfig"]["NetworkMode"] == "host"
        labels = attrs["Config"]["Labels"]
        assert labels[f"{LABEL}.managed-by"] == CLUSTER
        assert labels[f"{LABEL}.host"] == engine.name
    assert found["consul"]["Config"]["Image"] == AGENT_IMAGE_1
    assert found["registrator"]["Config"]["Image"] == STANDIN_REGISTRATOR_1
    args = found["consul"]["Config"]["Cmd"]
    assert args[args.index("-advertise") + 1] == engine.address
    # The audit log went where the image's CONSUL_RECONCILER_DB points: the state volume.
    audit_db = state / "audit.db"
    assert audit_db.is_file(), sorted(p.name for p in state.iterdir())
    assert audit_db.read_bytes()[:16] == b"SQLite format 3\0"


def test_image_reaches_an_ssh_host_with_the_keys_in_its_state_folder(
    clean_fleet: list[Engine], controller_image: dict[str, Any], tmp_path: Path
) -> None:
    """The image as the README tells operators to run it for ssh:// hosts: a folder with the key and
    known_hosts mounted read-only at /var/lib/consul-reconciler/.ssh, host key checking on."""
    engine = clean_fleet[0]
    gateway = start_ssh_gateway([engine], root=tmp_path / "sshd")
    try:
        ssh_dir = tmp_path / "ssh"
        shutil.copytree(gateway.home / ".ssh", ssh_dir)
        for path in (ssh_dir, *ssh_dir.iterdir()):
            os.chown(path, APP_UID, APP_UID)  # the operator's copy, readable by the image's user only
        document = _topology(engine, tmp_path / "data")
        document["hosts"][0]["docker"] = gateway.url(engine)
        topology = tmp_path / "topology.yaml"
        topology.write_text(yaml.safe_dump(document, sort_keys=False))
        topology.chmod(0o644)
        state = tmp_path / "state"
        state.mkdir()
        os.chown(state, APP_UID, APP_UID)
        with contextlib.closing(engine.client()) as client:
            container = client.containers.run(
                IMAGE,
                command=["plan", CONTAINER_TOPOLOGY, "--json"],
                detach=True,
                network_mode="host",
                volumes={
                    str(topology): {"bind": CONTAINER_TOPOLOGY, "mode": "ro"},
                    str(state): {"bind": STATE_DIR, "mode": "rw"},
                    str(ssh_dir): {"bind": f"{STATE_DIR}/.ssh", "mode": "ro"},
                },
            )
            try:
                status = container.wait(timeout=120)
                out = container.logs(stdout=True, stderr=False).decode(errors="replace")
                err = container.logs(stdout=False, stderr=True).decode(errors="replace")
            finally:
                container.remove(force=True, v=True)
    finally:
        stop_ssh_gateway(gateway)
    # 2: the plan has changes, i.e. the engine behind sshd was read (an SSH failure exits 1)
    assert status["StatusCode"] == 2, out + err
    planned = {(a["kind"], a["container"]) for a in json.loads(out)["actions"]}
    assert planned == {("create", "consul"), ("create", "registrator")}, out
    assert f"Accepted publickey for {gateway.user}" in gateway.log_path.read_text()
