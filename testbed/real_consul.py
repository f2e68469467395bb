"""A real Consul for the integration suite: built from its Go module, run in containers on the engines.

**The build.** ``testbed/consul_agent`` is a small Go main module of this project's own: its go.mod
requires ``github.com/hashicorp/consul`` at one pinned release (1.14.11, the newest release under the
MPL-2.0: 1.17 and later are under the BUSL) and its main.go hands the arguments to the command table
Consul registers. ``go install github.com/hashicorp/consul@vX`` cannot be used: Consul's root go.mod
has ``replace`` directives. The binary is static (``CGO_ENABLED=0``) and cached outside the
repository, keyed by the digest of go.mod, go.sum, main.go, the flags and the Go version; Go's module
and build caches live beside it. A fresh machine pays the build once (4 min 20 s measured here on two
cores); a warm rerun finds the binary and costs nothing.

**The images.** ``consul-reconciler-built/consul:1.14.11-a`` and ``:1.14.11-b``: the same binary in
two distinct images (their labels differ), so a rollout has a real image change to carry out. Both are
made offline ``FROM scratch`` with Debian's busybox-static, and their entrypoint keeps the contract of
the official ``hashicorp/consul`` image's: ``agent ...`` runs ``consul agent -data-dir=/consul/data
-config-dir=/consul/config ...``, so the product renders the same command lines for them as for the
official image. The namespace says what they are: nobody can take them for HashiCorp's. Differences
from the official image, none of which the product relies on: no ``consul`` user (the agent runs as
root, its data folder a bind mount the tests own), and a config folder that already holds one file,
``test.json``: no update check (it would call checkpoint.hashicorp.com; the tests talk to loopback
only) and ``performance.raft_multiplier = 1``, Consul's recommended production setting. The ``-acl``
variants add ``acl.json``: ACLs on, ``default_policy = deny``, a management token (``ACL_TOKEN``).

Command line::

    python -m testbed.real_consul build          # the binary (built once, then from the cache)
    python -m testbed.real_consul images [-n N]  # the images on engines 1..N of the fleet root
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import docker
import docker.errors

from testbed.baseimage import IMPORT_TIMEOUT
from testbed.fleet import (
    BUSYBOX,
    STANDIN_LABEL,
    Engine,
    FleetError,
    _add_file,
    _copy_images,
    _file_lock,
    _parallel,
    build_image,
    ensure_engines,
    fleet_net,
)

MODULE = Path(__file__).resolve().parent / "consul_agent"
CACHE_ENV = "CR_CONSUL_CACHE"
DEFAULT_CACHE = Path("/var/cache/consul-reconciler")
GO_FALLBACK = Path("/usr/local/go/bin/go")  # where this machine kind has Go (TESTING.md)

IMAGE_REPO = "consul-reconciler-built/consul"
ACL_IMAGE_REPO = "consul-reconciler-built/consul-acl"
VARIANTS = ("a", "b")
LABEL = f"{STANDIN_LABEL}.built-consul"
# The test clusters' management token when ACLs are on (a test secret, never a real one).
ACL_TOKEN = "5b0f1c1e-2bd7-4c0a-8d11-a5c1d0c0de01"

_TEST_CONFIG = {"disable_update_check": True, "performance": {"raft_multiplier": 1}}
_ACL_CONFIG = {
    "acl": {
        "enabled": True,
        "default_policy": "deny",
        "enable_token_persistence": True,
        "tokens": {"initial_management": ACL_TOKEN, "agent": ACL_TOKEN},
    }
}

# The official image's contract for what the product runs: `agent ...` gets the image's data and
# config folders; a Consul subcommand or bare flags run consul; anything else runs as given.
ENTRYPOINT = """#!/bin/sh
set -e
case "$1" in
  agent)
    shift
    set -- consul agent -data-dir=/consul/data -config-dir=/consul/config "$@"
    ;;
  -*|version|members|leave|join|kv|operator|info|keygen|acl|snapshot|reload|force-leave|catalog)
    set -- consul "$@"
    ;;
esac
exec "$@"
"""

_DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY consul /bin/consul
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN mkdir -p /consul/data /consul/config /tmp && chmod 1777 /tmp
COPY test.json /consul/config/test.json
{extra}LABEL {label}="{digest}" {label}.variant="{variant}" {label}.consul-version="{version}"
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["agent", "-dev", "-client", "0.0.0.0"]
"""


def pinned_version() -> str:
    """The Consul release go.mod requires, without its ``v``."""
    text = (MODULE / "go.mod").read_text()
    found = re.search(r"^\s*github\.com/hashicorp/consul v(\S+)\s*$", text, re.MULTILINE)
    if found is None:
        raise FleetError(f"{MODULE / 'go.mod'} requires no github.com/hashicorp/consul version")
    return found.group(1)


CONSUL_VERSION = pinned_version()
REAL_CONSUL_1 = f"{IMAGE_REPO}:{CONSUL_VERSION}-{VARIANTS[0]}"
REAL_CONSUL_2 = f"{IMAGE_REPO}:{CONSUL_VERSION}-{VARIANTS[1]}"
REAL_CONSUL_ACL_1 = f"{ACL_IMAGE_REPO}:{CONSUL_VERSION}-{VARIANTS[0]}"
REAL_CONSUL_ACL_2 = f"{ACL_IMAGE_REPO}:{CONSUL_VERSION}-{VARIANTS[1]}"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def go_binary() -> str:
    found = shutil.which("go") or (str(GO_FALLBACK) if GO_FALLBACK.exists() else None)
    if found is None:
        raise FleetError(
            f"no Go toolchain: 'go' is not on PATH and {GO_FALLBACK} does not exist. The real Consul of "
            f"the integration suite is built from its Go module (Consul {CONSUL_VERSION} needs Go 1.20 or "
            "later; Debian 12's golang package is 1.19)"
        )
    return found


def go_env() -> dict[str, str]:
    go = cache_root() / "go"
    return {
        **os.environ,
        "GOMODCACHE": str(go / "mod"),
        "GOCACHE": str(go / "build"),
        "GOTOOLCHAIN": "local",  # the machine's Go, never a toolchain download
        "CGO_ENABLED": "0",
        "GOFLAGS": "-mod=readonly -buildvcs=false",
    }


def ldflags() -> str:
    return f"-s -w -X github.com/hashicorp/consul/version.GitCommit=v{CONSUL_VERSION}"


def build_key(go: str) -> str:
    """What the binary is made from: the module's files, the flags, and the Go toolchain."""
    toolchain = subprocess.run([go, "version"], capture_output=True, text=True, check=True, env=go_env())
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update(name.encode() + b"\0" + (MODULE / name).read_bytes() + b"\0")
    digest.update(ldflags().encode() + b"\0" + toolchain.stdout.strip().encode())
    return digest.hexdigest()


def binary_path(key: str) -> Path:
    return cache_root() / "consul" / f"v{CONSUL_VERSION}-{key[:16]}" / "consul"


def reported_version(binary: Path) -> str | None:
    try:
        out = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    found = re.search(r"^Consul v(\S+)", out.stdout, re.MULTILINE)
    return found.group(1) if found else None


def build(say: bool = True) -> Path:
    """The real Consul binary: from the cache when it is there, else built once (minutes on a fresh
    machine). FleetError naming the command and its output when Go fails."""
    go = go_binary()
    key = build_key(go)
    target = binary_path(key)
    with _file_lock(cache_root() / "consul" / "build.lock"):
        if target.exists() and reported_version(target) == CONSUL_VERSION:
            if say:
                print(f"real Consul v{CONSUL_VERSION}: {target} (cached)")
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name("consul.partial")
        command = [go, "build", "-trimpath", "-ldflags", ldflags(), "-o", str(partial), "."]
        if say:
            print(f"building real Consul v{CONSUL_VERSION} from its Go module (minutes the first time) ...")
        started = time.monotonic()
        done = subprocess.run(command, cwd=MODULE, env=go_env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise FleetError(
                f"building Consul v{CONSUL_VERSION} failed (exit {done.returncode}): "
                f"cd {MODULE} && {' '.join(command)}\n{(done.stdout + done.stderr)[-4000:]}"
            )
        found = reported_version(partial)
        if found != CONSUL_VERSION:
            raise FleetError(f"the Consul built at {partial} reports version {found!r}, not {CONSUL_VERSION}")
        os.replace(partial, target)
        if say:
            print(f"built real Consul v{CONSUL_VERSION} in {time.monotonic() - started:.0f} s: {target}")
        return target


@functools.lru_cache(maxsize=1)
def built() -> Path:
    """``build()`` once per process: every test that wants the images asks, and the answer cannot
    change while the process runs."""
    return build(say=False)


# ------------------------------------------------------------------------------------------------
# Images


def _image_digest(key: str, acl: bool) -> str:
    parts = [key, ENTRYPOINT, _DOCKERFILE, json.dumps(_TEST_CONFIG, sort_keys=True)]
    if acl:
        parts.append(json.dumps(_ACL_CONFIG, sort_keys=True))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _context(binary: Path, variant: str, digest: str, acl: bool) -> io.BytesIO:
    extra = "COPY acl.json /consul/config/acl.json\n" if acl else ""
    dockerfile = _DOCKERFILE.format(
        extra=extra, label=LABEL, digest=digest, variant=variant, version=CONSUL_VERSION
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        _add_file(archive, "Dockerfile", dockerfile.encode(), 0o644)
        _add_file(archive, "busybox", BUSYBOX.read_bytes(), 0o755)
        _add_file(archive, "docker-entrypoint.sh", ENTRYPOINT.encode(), 0o755)
        _add_file(archive, "test.json", json.dumps(_TEST_CONFIG).encode(), 0o644)
        if acl:
            _add_file(archive, "acl.json", json.dumps(_ACL_CONFIG).encode(), 0o644)
        with binary.open("rb") as handle:
            info = tarfile.TarInfo("consul")
            info.size, info.mode, info.mtime = binary.stat().st_size, 0o755, 0
            archive.addfile(info, handle)
    buffer.seek(0)
    return buffer


def _current(engine: Engine, tag: str, digest: str) -> bool:
    with contextlib.closing(engine.client()) as client:
        try:
            return (client.images.get(tag).labels or {}).get(LABEL) == digest
        except docker.errors.ImageNotFound:
            return False


def ensure_images(engines: Sequence[Engine], *, acl: bool = False) -> tuple[str, str]:
    """Both tags of the real Consul image (or of its ACL variant) on every engine: built once, on the
    first engine lacking them, and copied to the others by save/load. Returns (variant a, variant b)."""
    tags = (REAL_CONSUL_ACL_1, REAL_CONSUL_ACL_2) if acl else (REAL_CONSUL_1, REAL_CONSUL_2)
    if not engines:
        return tags
    binary = built()
    digest = _image_digest(binary.parent.name, acl)  # the folder's name carries the build key
    with _file_lock(engines[0].state_dir.parent / "realconsul.lock"):
        for tag, variant in zip(tags, VARIANTS, strict=True):
            lacking = [e for e in engines if not _current(e, tag, digest)]
            if not lacking:
                continue
            having = [e for e in engines if e not in lacking]
            if having:
                source = having[0]
            else:
                source = lacking.pop(0)
                with contextlib.closing(
                    docker.DockerClient(base_url=source.url, timeout=IMPORT_TIMEOUT)
                ) as client:
                    build_image(client, _context(binary, variant, digest, acl), tag, f" on {source.name}")
            _parallel(functools.partial(_copy_images, source, tags=[tag]), lacking, f"copying {tag}")
    return tags


# ------------------------------------------------------------------------------------------------
# A real Consul server as a plain process: the desired state's store and the controllers' lock


class ConsulServer:
    """One real Consul server (the built binary, run as a process on this machine) bound to one
    loopback address: a cluster of one, its own leader. The KV tests keep the desired state and the
    leader lock in it, as an operator keeps them in a management cluster. ``take_down`` stops it
    (SIGTERM: a server that is stopped, not one that left); ``bring_up`` starts it again on the same
    data folder, so its KV and sessions survive as a real restart's do.

    Real Consul's defaults hold: sessions need a TTL of at least ``session_ttl_min`` (10 s) and are
    invalidated between one and two TTLs after their last renewal."""

    def __init__(self, workdir: Path, address: str | None = None, *, acl: bool = False) -> None:
        self.host = address or f"{fleet_net()}.250"
        self.port = 8500
        self.address = f"{self.host}:{self.port}"
        self.token = ACL_TOKEN if acl else None
        self.workdir = workdir
        self.data = workdir / "consul-data"
        self.config = workdir / "consul-config"
        self.proc: subprocess.Popen[bytes] | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
        self.config.mkdir(parents=True, exist_ok=True)
        (self.config / "test.json").write_text(json.dumps(_TEST_CONFIG))
        if acl:
            (self.config / "acl.json").write_text(json.dumps(_ACL_CONFIG))

    def __enter__(self) -> ConsulServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self, timeout: float = 60.0) -> ConsulServer:
        self.data.mkdir(parents=True, exist_ok=True)
        command = [
            str(built()),
            "agent",
            "-server",
            "-bootstrap-expect=1",
            f"-node=kvstore-{self.host.replace('.', '-')}",
            f"-bind={self.host}",
            f"-client={self.host}",
            f"-advertise={self.host}",
            f"-data-dir={self.data}",
            f"-config-dir={self.config}",
        ]
        with (self.workdir / "consul.log").open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise FleetError(f"consul exited ({self.proc.returncode}); see {self.workdir / 'consul.log'}")
            if time.monotonic() > deadline:
                raise FleetError(f"consul at {self.address} had no leader within {timeout:.0f} s")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:  # a leader, and a KV write that went through it
            self.kv_put("consul-reconciler-test/ready", b"1")
            return True
        except (OSError, ValueError):
            return False

    def _request(self, method: str, path: str, data: bytes | None = None) -> bytes:
        headers = {"X-Consul-Token": self.token} if self.token else {}
        request = urllib.request.Request(
            f"http://{self.address}{path}", data=data, method=method, headers=headers
        )
        with self._opener.open(request, timeout=5) as response:
            return bytes(response.read())

    def kv_put(self, key: str, value: bytes) -> None:
        if json.loads(self._request("PUT", f"/v1/kv/{key}", value)) is not True:
            raise ValueError(f"PUT /v1/kv/{key} was not applied")

    def kv_get(self, key: str) -> bytes | None:
        try:
            return self._request("GET", f"/v1/kv/{key}?raw")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def kv_delete(self, key: str) -> None:
        self._request("DELETE", f"/v1/kv/{key}")

    def take_down(self) -> None:
        """SIGTERM, as a server that is stopped: it does not leave (servers keep their place)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def bring_up(self) -> None:
        self.start()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.real_consul", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the real Consul binary, or find it in the cache")
    images = sub.add_parser("images", help="put the real Consul images on engines 1..N")
    images.add_argument("-n", "--engines", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build()
        else:
            fleet = ensure_engines(args.engines)
            print(" ".join(ensure_images(fleet) + ensure_images(fleet, acl=True)))
    except (FleetError, subprocess.SubprocessError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
