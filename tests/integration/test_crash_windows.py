"""Interleavings that used to let a deposed leader act or leave a container in a state the next pass
called converged, reproduced step by step against real engines: a fault-injecting proxy in front of
an engine (testbed/dockerproxy.py) holds or drops the request at exactly the step that matters."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from desired_state.load import load_topology
from desired_state.spec import Endpoint
from reconciler.engines import Connections
from reconciler.eventhub import EventHub, HubStream
from reconciler.observe import observe_fleet
from reconciler.one_pass import PassOptions, run_pass
from reconciler.store import ActionFilter, AuditLog
from reconciler.triggers import EventWatcher
from testbed.controller_harness import ControllerProcess, wait_for
from testbed.dockerproxy import DockerProxy
from testbed.fleet import AGENT_IMAGE_1, AGENT_IMAGE_2, STANDIN_LABEL, Engine, _copy_images, build_image
from tests.integration.harness import LABEL, Fleet

PULLED = "consul-reconciler-standin/consul-agent:pulled"
CRASHING = "consul-reconciler-standin/consul-crash:1"


@pytest.fixture
def proxied(clean_fleet: list[Engine], tmp_path: Path) -> Iterator[tuple[Fleet, DockerProxy]]:
    """host1 alone, reached through a proxy in front of its engine."""
    engine = clean_fleet[0]
    proxy = DockerProxy(engine.socket_path, Path(f"/tmp/crproxy-{os.getpid()}-{time.monotonic_ns()}.sock"))
    proxy.start()
    fleet = Fleet([engine], tmp_path, cluster="crash")
    fleet.doc["hosts"][0]["docker"] = proxy.url
    fleet.write()
    try:
        yield fleet, proxy
    finally:
        proxy.stop()


def _pass(fleet: Fleet, audit: AuditLog, leadership_lost: Any = lambda: None) -> Any:
    loaded = load_topology(fleet.file.read_bytes(), source=str(fleet.file))
    connections = Connections()
    try:
        return run_pass(
            loaded,
            source=f"file:{fleet.file}",
            connections=connections,
            audit=audit,
            options=PassOptions(),
            leadership_lost=leadership_lost,
            environ=fleet.env,
        )
    finally:
        connections.close()


def _events(engine: Engine, container_id: str, since: float) -> list[dict[str, Any]]:
    with contextlib.closing(engine.client()) as client:
        return list(
            client.api.events(
                since=since, until=time.time(), decode=True, filters={"container": [container_id]}
            )
        )


PULL_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
    + json.dumps({"status": f"Status: Downloaded newer image for {PULLED}"}).encode()
    + b"\r\n"
)


def test_leadership_lost_during_a_slow_pull_no_leave_or_stop_follows(
    proxied: tuple[Fleet, DockerProxy], clean_fleet: list[Engine], tmp_path: Path
) -> None:
    fleet, proxy = proxied
    host1, other = clean_fleet[0], clean_fleet[1]
    with contextlib.closing(other.client()) as client:  # an image host1 must pull
        client.images.get(AGENT_IMAGE_2).tag(PULLED)
    with contextlib.closing(host1.client()) as client, contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(PULLED)
    audit = AuditLog(str(tmp_path / "audit.db"))
    try:
        assert _pass(fleet, audit).ok
        fleet.wait_consul_healthy()
        old = fleet.containers(host1)["consul"]
        fleet.doc["consul"]["image"] = PULLED
        fleet.write()
        pull = proxy.hold("POST", r"/images/create")
        acting = threading.Event()
        acting.set()
        outcome: dict[str, Any] = {}
        worker = threading.Thread(
            target=lambda: outcome.update(
                result=_pass(fleet, audit, lambda: None if acting.is_set() else "no longer the leader")
            )
        )
        worker.start()
        assert pull.arrived.wait(30), "the replacement never pulled"
        acting.clear()  # leadership lost while the pull is slow
        _copy_images(other, host1, [PULLED])  # the pull does complete, late
        pull.release(forward=False, answer=PULL_ANSWER)
        worker.join(60)
        assert not worker.is_alive()
        [row] = audit.actions(ActionFilter(kind="replace"))
        assert row.status == "interrupted" and "no longer the leader" in (row.error or ""), row
        assert not proxy.did("POST", r"/containers/.*/(stop|kill)")  # no stop
        now = fleet.containers(host1)
        assert now["consul"]["Id"] == old["Id"] and now["consul"]["State"]["Running"]
        assert now["consul"]["HostConfig"]["RestartPolicy"]["Name"] == "always"
        assert set(now) == {"consul", "registrator"}  # the replacement's new container is gone too
        with contextlib.closing(host1.client()) as client:
            assert "leaving the cluster" not in client.containers.get(old["Id"]).logs().decode()  # no leave
    finally:
        audit.close()
        for engine in (host1, other):
            with contextlib.closing(engine.client()) as client, contextlib.suppress(docker.errors.APIError):
                client.images.remove(PULLED)


def test_a_kill_between_create_and_the_key_upload_never_starts_an_agent_without_its_key(
    proxied: tuple[Fleet, DockerProxy], clean_fleet: list[Engine]
) -> None:
    fleet, proxy = proxied
    host1 = clean_fleet[0]
    key = base64.b64encode(os.urandom(32)).decode()
    fleet.env["CR_TEST_GOSSIP"] = key
    fleet.doc["consul"]["encrypt"] = {"env": "CR_TEST_GOSSIP"}
    fleet.write()
    upload = proxy.hold("PUT", r"/containers/.*/archive")
    apply = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "apply", str(fleet.file), "--db", str(fleet.db)],
        env=fleet.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert upload.arrived.wait(30), "the agent's key was never uploaded"
        apply.send_signal(signal.SIGKILL)  # the controller dies between the create and the upload
        apply.wait(10)
    finally:
        upload.release(forward=False)
    left = fleet.containers(host1)
    assert "consul" not in left, "an agent without its key exists under its final name"
    for name, attrs in left.items():  # only the temporary container, never started
        assert name.startswith("consul-next-") and attrs["State"]["Status"] == "created", name
    again = fleet.apply()  # the next pass removes the leftover and makes the agent with its key
    assert again.code == 0, again.stdout + again.stderr
    assert set(fleet.containers(host1)) == {"consul", "registrator"}
    with contextlib.closing(host1.client()) as client:
        code, output = client.containers.get("consul").exec_run(["cat", "/consul/config/encrypt.json"])
    assert code == 0 and json.loads(output) == {"encrypt": key}


def test_adopting_a_running_hand_started_server_leaves_before_it_stops(
    clean_fleet: list[Engine], tmp_path: Path
) -> None:
    engine = clean_fleet[0]
    fleet = Fleet([engine], tmp_path, cluster="adopt")
    hand_data = tmp_path / "by-hand"
    hand_data.mkdir()
    with contextlib.closing(engine.client()) as client:
        by_hand = client.containers.run(  # as the blog recipe starts a server
            AGENT_IMAGE_1,
            ["agent", "-server", "-bootstrap-expect=1", "-node=host1", "-client", engine.address,
             "-advertise", engine.address, "-ui"],
            name="consul", network_mode="host", detach=True, restart_policy={"Name": "always"},
            volumes={str(hand_data): {"bind": "/consul/data", "mode": "rw"}},
        )  # fmt: skip
    fleet.wait_consul_healthy()
    since = time.time()
    blocked = fleet.apply()
    assert blocked.code == 1 and "--adopt host1/consul" in blocked.stdout
    adopted = fleet.apply("--adopt", "host1/consul")
    assert adopted.code == 0, adopted.stdout + adopted.stderr
    actions = {e.get("Action") for e in _events(engine, str(by_hand.id), since)}
    assert "die" in actions and "kill" not in actions, actions  # it left and exited; never stopped
    died = next(e for e in _events(engine, str(by_hand.id), since) if e.get("Action") == "die")
    assert died["Actor"]["Attributes"]["exitCode"] == "0"
    assert fleet.containers(engine)["consul"]["Config"]["Labels"][f"{LABEL}.managed-by"] == "adopt"


def _crashing_image(engines: list[Engine]) -> None:
    """A Consul server that joins, then dies after 2 s, again and again (restart policy always): a
    crash-looping member of the raft configuration, never healthy."""
    dockerfile = (
        f"FROM {AGENT_IMAGE_1}\n"
        'ENTRYPOINT ["sh", "-c", "timeout 2 python3 -u /agent_standin.py \\"$@\\"; exit 1", "--"]\n'
        f'LABEL {STANDIN_LABEL}="crash"\n'
    )
    for engine in engines:
        with contextlib.closing(engine.client()) as client:
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(CRASHING, force=True)  # built FROM the agent image of this run
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as archive:
                data = dockerfile.encode()
                info = tarfile.TarInfo("Dockerfile")
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))
            buffer.seek(0)
            build_image(client, buffer, CRASHING)


def test_a_crash_looping_server_is_fixed_by_a_corrected_spec(
    clean_fleet: list[Engine], tmp_path: Path
) -> None:
    _crashing_image(clean_fleet)
    fleet = Fleet(clean_fleet, tmp_path, cluster="crashloop")
    for host in fleet.doc["hosts"]:
        host["role"] = "server"
    fleet.doc["rollout"]["deadline"] = 8
    fleet.write()
    assert fleet.apply().code == 0
    fleet.wait_consul_healthy(3)
    # The crashing agent lives 2 s a time, so asked to stay healthy 3 s it never can. Consul's view
    # alone did not show it: restarted within a few hundred ms, the agent looked alive and healthy to
    # the other servers through its deaths, and the rollout went on to a second server (twice in
    # whole-suite runs). The gate now also counts the container's restarts on its engine.
    fleet.doc["rollout"]["stabilization"] = 3
    fleet.doc["consul"]["image"] = CRASHING
    fleet.write()
    broken = fleet.apply()
    assert broken.code == 1 and "rollout paused" in broken.stdout + broken.stderr
    looping = [e for e in fleet.engines if fleet.containers(e)["consul"]["Config"]["Image"] == CRASHING]
    assert len(looping) == 1  # one server crash-loops; the rollout stopped there
    wait_for(
        lambda: fleet.containers(looping[0])["consul"]["RestartCount"] >= 2, 30, "the server to crash-loop"
    )
    fleet.doc["consul"]["image"] = AGENT_IMAGE_1  # the corrected spec (a new document lifts the pause)
    fleet.write()
    fixed = fleet.apply()
    assert fixed.code == 0, fixed.stdout + fixed.stderr
    fleet.wait_consul_healthy(3)
    assert all(fleet.containers(e)["consul"]["Config"]["Image"] == AGENT_IMAGE_1 for e in fleet.engines)


def test_one_ssh_engine_that_never_answers_holds_up_no_other_host(
    clean_fleet: list[Engine],
) -> None:
    with socket.socket() as silent:  # accepts, and never says a word (no SSH banner)
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        endpoints = {
            "host1": Endpoint(url=clean_fleet[0].url, timeout=2.0),
            "mute": Endpoint(url=f"ssh://root@127.0.0.1:{port}", timeout=2.0),
        }
        connections = Connections()
        try:
            fleet = observe_fleet(connections, endpoints, {})
        finally:
            connections.close()
    host1, mute = fleet.host("host1"), fleet.host("mute")
    assert host1 is not None and host1.reachable
    # the SSH library alone waits 15 s for a banner (its own error then names the banner); the host's
    # 2 s timeout is what ended it: its own message says so (no timing asserted: it says which bound)
    assert mute is not None and not mute.reachable, mute
    assert "SSH to ssh://root@127.0.0.1:" in (mute.error or "") and "did not complete within 2s" in (
        mute.error or ""
    )


class _Followed:
    """One host's event stream as the controller follows it: on a thread of its own (ssh:// hosts,
    reconciler.triggers.EventWatcher) or on the event hub's loop (unix:// and tcp://)."""

    def __init__(self, kind: str, endpoint: Endpoint, seen: list[tuple[str, str]]) -> None:
        def on_event(host: str, action: str, event: Any) -> None:
            seen.append((action, str(event.get("id", ""))))

        self.hub: EventHub | None = None
        if kind == "thread":
            self.stream: EventWatcher | HubStream = EventWatcher(
                "host1", endpoint, "crash", on_event, window=2.0, grace=1.0
            )
            self.stream.start()
        else:
            self.hub = EventHub()
            stream = HubStream("host1", endpoint, "crash", on_event, window=2.0, grace=1.0)
            self.stream = self.hub.watch(stream)

    def stop(self) -> None:
        if isinstance(self.stream, EventWatcher):
            self.stream.stop()
            self.stream.join(10)
        if self.hub is not None:
            self.hub.stop()


@pytest.mark.parametrize("kind", ["thread", "hub"])
def test_a_half_open_event_stream_is_noticed_and_no_event_is_lost(
    proxied: tuple[Fleet, DockerProxy], clean_fleet: list[Engine], kind: str
) -> None:
    fleet, proxy = proxied
    host1 = clean_fleet[0]
    assert fleet.apply().code == 0
    proxy.blackhole("GET", r"/events", times=1)  # the first stream: connected, and then silence
    seen: list[tuple[str, str]] = []
    followed = _Followed(kind, Endpoint(url=proxy.url, timeout=5.0), seen)
    watcher = followed.stream
    try:
        wait_for(watcher.connected.is_set, 10, "the first (silent) stream")
        with contextlib.closing(host1.client()) as client:
            registrator = client.containers.get("registrator")
            registrator.kill()
        wait_for(lambda: ("kill", registrator.id) in seen, 20, "the kill, after the stream was found dead")
        assert ("reconnected", "") in seen
        wait_for(lambda: watcher.windows >= 2, 20, "healthy windows after the reconnection")
        assert watcher.delay == 0.5  # a stream that worked resets the backoff
    finally:
        followed.stop()


def test_healthz_stays_ok_through_a_gate_wait_and_fails_when_a_step_hangs(
    proxied: tuple[Fleet, DockerProxy], clean_fleet: list[Engine], tmp_path: Path
) -> None:
    fleet, proxy = proxied
    fleet.doc["rollout"]["deadline"] = 12
    fleet.write()
    assert fleet.apply().code == 0
    fleet.wait_consul_healthy()
    ctl = ControllerProcess(
        fleet.file, fleet.db, tmp_path / "ctl.log", "--interval", "1", "--stop-timeout", "5", env=fleet.env
    )
    try:
        ctl.wait_ready()
        # a replacement that never becomes healthy: the gate waits 12 s, 4 intervals: legitimately
        (Path(fleet.doc["hosts"][0]["data_dir"]) / "standin-refuse-healthy").write_text("test\n")
        fleet.doc["consul"]["image"] = AGENT_IMAGE_2
        fleet.write()
        wait_for(lambda: "waiting for server" in ctl.get("/healthz")[1], 30, "the gate wait")
        answers = []
        for _ in range(10):
            answers.append(ctl.get("/healthz")[0])
            time.sleep(0.5)
        assert set(answers) == {200}, answers
        wait_for(lambda: "rollout paused" in ctl.log(), 30, "the pause at the deadline")
        # a Docker call that hangs: no progress for longer than 3 intervals is a wedge
        (Path(fleet.doc["hosts"][0]["data_dir"]) / "standin-refuse-healthy").unlink()
        proxy.hold("POST", r"/containers/.*/start", times=None)
        fleet.doc["consul"]["image"] = AGENT_IMAGE_1  # a new document: the pause is lifted
        fleet.write()
        _code, body = wait_for(lambda: (r := ctl.get("/healthz"))[0] == 503 and r, 30, "/healthz to turn 503")
        assert "no progress" in body
        proxy.clear()
        wait_for(lambda: ctl.get("/healthz")[0] == 200, 60, "/healthz to recover")
    finally:
        ctl.stop()
