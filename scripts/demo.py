"""The demo: converge a local three-host Consul fleet, then show the plan, the containers and the audit log.

Run through ``bash scripts/demo.sh`` (which installs what is missing first). Hosts are local Docker
engines started here (testbed/fleet.py), or the engines named in ``DEMO_DOCKER_HOSTS`` (comma-separated
``unix://``/``tcp://`` URLs, the first one becomes the server). It never reaches for a registry unless
asked (``--pull``): it uses the real images when the engines have them, else builds offline stand-ins
and says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEMO_FLEET_ROOT = "/tmp/crdemo"  # the demo's engines, apart from the tests' (set in main, not on import)
DEMO_FLEET_NET = "127.0.30"

from testbed.fleet import (  # noqa: E402  (the path is set up just above)
    STANDIN_CONSUL_1,
    STANDIN_REGISTRATOR_1,
    Engine,
    ensure_engines,
    ensure_standin_images,
)

REAL_CONSUL = "hashicorp/consul:1.20"
REAL_REGISTRATOR = "gliderlabs/registrator:latest"
STATE = ROOT / ".state" / "demo"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"\n==> {text}", flush=True)


def cli(*args: str, check: bool = False) -> int:
    print(f"$ consul-reconciler {' '.join(args)}", flush=True)
    code = subprocess.call([sys.executable, "-m", "reconciler.cli", *args])
    if check and code != 0:
        sys.exit(f"demo: `consul-reconciler {' '.join(args)}` exited {code}")
    return code


def hosts() -> tuple[list[tuple[str, str, str]], list[Engine]]:
    """(name, docker URL, advertise address) per host, and the engines the demo started."""
    given = [u.strip() for u in os.environ.get("DEMO_DOCKER_HOSTS", "").split(",") if u.strip()]
    if given:
        return [(f"node{i}", url, f"127.0.20.{i}") for i, url in enumerate(given, 1)], []
    say("starting three local Docker engines (one per demo host; reused if already running)")
    engines = ensure_engines(3)
    for e in engines:
        print(f"  {e.name}: {e.url}  advertise {e.address}")
        client = e.client()
        with contextlib.closing(client):
            for container in client.containers.list(all=True):
                container.remove(force=True)  # the demo's own engines: start from empty every time
    return [(f"node{e.index}", e.url, e.address) for e in engines], engines


def images(urls: list[str], engines: list[Engine], pull: bool = False) -> tuple[str, str]:
    """The images the demo runs. Never a registry unless asked (``--pull``): the real images when every
    engine has them already, else stand-ins built here from busybox, and the demo says which."""
    real = (REAL_CONSUL, REAL_REGISTRATOR)
    try:
        for url in urls:
            client = docker.DockerClient(base_url=url, timeout=60, version="1.41")
            with contextlib.closing(client):
                for image in real:
                    if pull:
                        client.images.pull(image)
                    else:
                        client.images.get(image)
        print("  pulled the real images" if pull else "  using the real images already on the engines")
        return real
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        reason = str(exc).splitlines()[0][:160]
        if pull:
            print(f"  no registry reachable ({reason})")
        else:
            print(f"  the real images are not on the engines ({reason}); not pulling them (--pull does)")
        print("  OFFLINE: building stand-in images from busybox instead. They accept the same command")
        print("  lines and keep running, so everything the controller does is real except Consul itself.")
        if not engines:
            sys.exit("demo: no real images here, and stand-ins are only built on the demo's own engines")
        ensure_standin_images(engines)
        return STANDIN_CONSUL_1, STANDIN_REGISTRATOR_1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    sys.exit(f"demo: timed out waiting for {what}; see {STATE / 'controller.log'}")


def _running(client: docker.DockerClient, name: str) -> bool:
    try:
        return bool(client.containers.get(name).status == "running")
    except docker.errors.NotFound:
        return False


def _all_running(fleet: list[tuple[str, str, str]]) -> bool:
    for _, url, _ in fleet:
        client = docker.DockerClient(base_url=url, version="1.41")
        with contextlib.closing(client):
            if not (_running(client, "consul") and _running(client, "registrator")):
                return False
    return True


def _show_containers(fleet: list[tuple[str, str, str]]) -> None:
    for name, url, _ in fleet:
        client = docker.DockerClient(base_url=url, version="1.41")
        with contextlib.closing(client):
            for c in client.containers.list(all=True, filters={"label": "io.consul-reconciler.managed-by"}):
                print(
                    f"  {name}: {c.name:<12} {c.status:<8} {c.image.tags[0] if c.image.tags else c.image.id}"
                )


def main() -> None:
    import argparse

    # Set here, not when the module is imported: a test that imports it (test_demo_images) must not
    # move every later test of its session onto the demo's engines (seen: their real Consul agents,
    # left running on the tests' addresses, broke the next session's rollouts).
    os.environ.setdefault("CR_FLEET_ROOT", DEMO_FLEET_ROOT)
    # and its own loopback /24: a demo left running must not hold the addresses of the tests' hosts
    # (127.0.10 and 127.0.11, testbed/workers.py)
    os.environ.setdefault("CR_FLEET_NET", DEMO_FLEET_NET)

    parser = argparse.ArgumentParser(description="Converge a local three-host Consul fleet and show it.")
    parser.add_argument(
        "--pull",
        action="store_true",
        help=f"pull {REAL_CONSUL} and {REAL_REGISTRATOR} from their registry (never done otherwise)",
    )
    args = parser.parse_args()
    if STATE.exists():
        import shutil

        shutil.rmtree(STATE)
    STATE.mkdir(parents=True)
    os.environ["CONSUL_RECONCILER_DB"] = str(STATE / "audit.db")
    fleet, engines = hosts()
    say(f"the images ({REAL_CONSUL}, {REAL_REGISTRATOR})")
    consul_image, registrator_image = images([url for _, url, _ in fleet], engines, pull=args.pull)
    topology = {
        "cluster": "demo",
        "datacenter": "dc1",
        "consul": {"image": consul_image, "ui": True},
        "registrator": {"image": registrator_image, "internal": True},
        # the offline stand-ins have no Consul HTTP API to gate server changes on
        "rollout": {"gates": consul_image != STANDIN_CONSUL_1},
        "hosts": [
            {
                "name": name,
                "docker": url,
                "advertise": addr,
                "role": "server" if i == 0 else "client",
                "data_dir": str(STATE / f"data-{name}"),
                # a tcp:// engine given to the demo is reached as the demo reaches it: plain HTTP
                **({"tls": False} if url.startswith("tcp://") else {}),
            }
            for i, (name, url, addr) in enumerate(fleet)
        ],
    }
    path = STATE / "topology.yaml"
    path.write_text(yaml.safe_dump(topology, sort_keys=False))
    say(f"the desired topology ({path})")
    print(path.read_text())
    say("what it means, as the docker run lines of the blog recipe")
    cli("render", str(path), check=True)
    say("the plan (exit 2: changes pending; 0: nothing to do)")
    cli("plan", str(path))
    say("run the controller in the background: it converges every host, then keeps watching")
    db = os.environ["CONSUL_RECONCILER_DB"]
    port = _free_port()
    log = open(STATE / "controller.log", "w")  # noqa: SIM115 - closed below
    print(f"$ consul-reconciler run {path} --http 127.0.0.1:{port}   (log: {STATE / 'controller.log'})")
    controller = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "run", str(path), "--http", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait(lambda: _get(port, "/readyz") == 200, 60, "the controller to be ready")
        _wait(lambda: _all_running(fleet), 60, "every host to converge")
        print(f"  ready: http://127.0.0.1:{port}/healthz, /readyz, /metrics")
        say("plan again: nothing to do")
        cli("plan", str(path), check=True)
        say("the containers on each host")
        _show_containers(fleet)
        name, url, _ = fleet[1]
        say(f"drift: remove the registrator on {name} by hand; the controller puts it back at once")
        client = docker.DockerClient(base_url=url, version="1.41")
        with contextlib.closing(client):
            started = time.monotonic()
            client.containers.get("registrator").remove(force=True)
            _wait(lambda: _running(client, "registrator"), 30, "the registrator to come back")
            print(f"  back and running after {(time.monotonic() - started) * 1000:.0f} ms")
        say("status: desired vs observed, drift, last action, backoff")
        cli("status", str(path))
    finally:
        controller.send_signal(signal.SIGTERM)
        code = controller.wait(60)
        log.close()
        print(f"\n(controller stopped with SIGTERM, exit code {code})")
    say("the audit log (every action, written before it happened)")
    cli("audit", "--limit", "10")
    cli("audit", "--runs", "--limit", "5")
    print(f"\naudit database: {db}")
    say("done")
    print(
        f"Keep it converging: .venv/bin/consul-reconciler run {path}  (then edit the file: the fleet follows)"
    )
    root = os.environ["CR_FLEET_ROOT"]
    print(f"`CR_FLEET_ROOT={root} .venv/bin/python -m testbed.fleet down` stops the demo engines.")


if __name__ == "__main__":
    main()
