"""A local fleet of independent Docker engines ("hosts") for the real-Docker tests.

Engine ``i`` (1-based) is a separate ``dockerd`` with its own state folder under the fleet root
(``/tmp/crfleet`` unless ``CR_FLEET_ROOT`` says otherwise)::

    $ROOT/host<i>/docker.sock   the engine's API socket (unix://...)
    $ROOT/host<i>/data          --data-root (images, containers, volumes)
    $ROOT/host<i>/exec          --exec-root (its own containerd, runc state)
    $ROOT/host<i>/docker.pid    --pidfile
    $ROOT/host<i>/dockerd.log   everything dockerd and its containerd print

Each host is also given a loopback address, ``127.0.10.<i>``, that containers of that host (which
use host networking) bind to, so that hosts do not clash on ports. ``CR_FLEET_NET=127.0.20`` gives
another ``/24`` of loopback (with another ``CR_FLEET_ROOT``, a second test session that keeps clear
of the first: their agents would otherwise bind the same addresses). Nothing here sends traffic
anywhere but to the engines' unix sockets.

Stopping an engine (SIGTERM to its dockerd) is a host going down; starting it again with the
same folders brings its containers back. Engines are left running after a test session so the
next one reuses them; ``python -m testbed.fleet down`` stops them.

Used as a module (``ensure_engines``, ``ensure_standin_images``) by ``tests/conftest.py`` and as a
command line::

    python -m testbed.fleet up --engines 3      # start (or reuse) 3 engines and build the images
    python -m testbed.fleet status              # show every engine found under the root
    python -m testbed.fleet down [--purge]      # stop them (and delete their folders)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import fcntl
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker

DEFAULT_ROOT = "/tmp/crfleet"
ROOT_ENV = "CR_FLEET_ROOT"
NET_ENV = "CR_FLEET_NET"
DEFAULT_NET = "127.0.10"
STORAGE_DRIVER_ENV = "CR_FLEET_STORAGE_DRIVER"
DEFAULT_ENGINES = 3
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
CLIENT_TIMEOUT = 30
BUSYBOX = Path("/bin/busybox")

# Stand-in images, built offline from Debian's busybox-static (no registry is reachable).
STANDIN_CONSUL_1 = "consul-reconciler-standin/consul:1"
STANDIN_CONSUL_2 = "consul-reconciler-standin/consul:2"
STANDIN_REGISTRATOR_1 = "consul-reconciler-standin/registrator:1"
STANDIN_IMAGES: tuple[str, ...] = (STANDIN_CONSUL_1, STANDIN_CONSUL_2, STANDIN_REGISTRATOR_1)
STANDIN_LABEL = "org.consul-reconciler.standin"
# The Consul agent of the integration suite: images of the agent stand-in (testbed/agent_image.py builds
# them), which answer Consul's HTTP API, so the default, gated rollout path runs in every test.
AGENT_IMAGE_1 = "consul-reconciler-standin/consul-agent:1"
AGENT_IMAGE_2 = "consul-reconciler-standin/consul-agent:2"

# Unix socket paths are limited to 108 bytes (sun_path); keep well below it. The longest one an
# engine creates is its containerd's ttrpc socket under the exec root.
_MAX_SOCKET_PATH = 100
_LONGEST_SOCKET_SUFFIX = "/exec/containerd/containerd.sock.ttrpc"
_LOG_ROTATE_BYTES = 8 * 1024 * 1024
_START_MARKER = "=== testbed.fleet: starting dockerd"
_MNT_DETACH = 2

# The stand-ins' entrypoint: print the command line once (so ``docker logs`` shows what the product
# asked for), then idle until SIGTERM/SIGINT and exit 0 at once. PID 1 ignores signals it has no
# handler for, and ``exec sleep`` would make every ``docker stop`` wait the full 10 s grace period;
# a trap plus an interruptible ``wait`` stops in well under a second.
ENTRYPOINT_SCRIPT = """#!/bin/sh
echo "$*"
trap 'exit 0' TERM INT
while :; do sleep 1 & wait $!; done
"""

_DOCKERFILE_BASE = """FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY standin-entrypoint /standin-entrypoint
ENTRYPOINT ["/standin-entrypoint"]
"""
# Shared steps first so the build cache serves them to all three images.
STANDIN_DOCKERFILES: dict[str, str] = {
    STANDIN_CONSUL_1: _DOCKERFILE_BASE
    + 'RUN ["/bin/mkdir", "-p", "/consul/data", "/consul/config"]\n'
    + f'LABEL {STANDIN_LABEL}="consul" {STANDIN_LABEL}.version="1"\n',
    STANDIN_CONSUL_2: _DOCKERFILE_BASE
    + 'RUN ["/bin/mkdir", "-p", "/consul/data", "/consul/config"]\n'
    + f'LABEL {STANDIN_LABEL}="consul" {STANDIN_LABEL}.version="2"\n',
    STANDIN_REGISTRATOR_1: _DOCKERFILE_BASE
    + f'LABEL {STANDIN_LABEL}="registrator" {STANDIN_LABEL}.version="1"\n',
}


class FleetError(RuntimeError):
    """The fleet cannot be brought up (missing tools, an engine that does not start, ...)."""


def fleet_root() -> Path:
    """The folder holding every engine's state folder (``$CR_FLEET_ROOT`` or /tmp/crfleet)."""
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def fleet_net() -> str:
    """The first three octets of the hosts' loopback addresses (``$CR_FLEET_NET`` or 127.0.10)."""
    net = os.environ.get(NET_ENV) or DEFAULT_NET
    octets = net.split(".")
    if len(octets) != 3 or octets[0] != "127" or not all(o.isdigit() and int(o) <= 255 for o in octets):
        raise FleetError(f"{NET_ENV}={net!r}: give three octets of loopback, such as 127.0.20")
    return net


# --------------------------------------------------------------------------------------------------
# Process helpers


# dockerd processes started by this Python process, kept so they can be reaped (not left as
# zombies that still look alive) and so Popen does not warn about children still running.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _pid_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
            return False
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Field 3, after the parenthesised command name: Z (zombie) or X (dead) are gone for us.
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _pid_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _terminate(pid: int, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns when the process is gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _pid_alive(pid):
            return


def _all_cmdlines() -> Iterator[list[str]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            cmdline = _pid_cmdline(int(entry.name))
            if cmdline:
                yield cmdline


def _cgroup_pids(container_id: str) -> set[int]:
    """Pids in a Docker container's cgroup (cgroup v1 with cgroupfs, or v2, or the systemd driver)."""
    patterns = (
        f"*/docker/{container_id}/cgroup.procs",
        f"docker/{container_id}/cgroup.procs",
        f"system.slice/docker-{container_id}.scope/cgroup.procs",
        f"*/system.slice/docker-{container_id}.scope/cgroup.procs",
    )
    pids: set[int] = set()
    for pattern in patterns:
        for procs in Path("/sys/fs/cgroup").glob(pattern):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(line) for line in procs.read_text().split())
    return pids


def _unix_ping(socket_path: Path, timeout: float = 2.0) -> bool:
    """True if a Docker engine answers ``GET /_ping`` with 200 OK on this unix socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            data = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    status_line = data.split(b"\r\n", 1)[0]
    return status_line.split(b" ")[1:2] == [b"200"] and data.endswith(b"OK")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock, so two test sessions sharing a root do not start one engine twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mount_fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (from /proc/self/mountinfo)."""
    target = str(path.resolve())
    best, best_type = "", ""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount_point = fields[4].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, right.split()[0]
    return best_type


def storage_driver_for(root: Path) -> str:
    """The storage driver the engines under ``root`` use.

    overlay2 where the kernel has overlayfs and ``root`` is on a file system overlay2 supports as
    its backing store (ext4 here, see TESTING.md). Otherwise (e.g. a root on overlayfs itself,
    as inside a container, or on NFS) fall back to vfs: slow and space-hungry (a full copy per
    layer), but it works anywhere and our stand-in images are 2 MB. ``$CR_FLEET_STORAGE_DRIVER``
    overrides the choice. An engine keeps the driver it was first started with for its data root.
    """
    override = os.environ.get(STORAGE_DRIVER_ENV)
    if override:
        return override
    try:
        has_overlay = "\toverlay\n" in Path("/proc/filesystems").read_text()
    except OSError:
        has_overlay = False
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if has_overlay and _mount_fs_type(probe) in {"ext4", "ext3", "xfs", "btrfs", "tmpfs"}:
        return "overlay2"
    return "vfs"


def require_tools() -> None:
    """Raise FleetError naming what is missing: root, dockerd, a static /bin/busybox."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("the Docker engines need root (run the tests as root)")
    if shutil.which("dockerd") is None:
        problems.append("dockerd is not installed (apt-get install -y docker.io)")
    problems.extend(_busybox_problems())
    if problems:
        raise FleetError("cannot run the Docker test fleet: " + "; ".join(problems))


def _busybox_problems() -> list[str]:
    if not BUSYBOX.is_file():
        return [f"{BUSYBOX} is missing (apt-get install -y busybox-static)"]
    if _elf_interpreter(BUSYBOX) is not None:
        return [
            f"{BUSYBOX} is dynamically linked and cannot run in a FROM-scratch image "
            "(apt-get install -y busybox-static)"
        ]
    return []


def _elf_interpreter(path: Path) -> str | None:
    """The PT_INTERP of a 64-bit little-endian ELF file, or None for a static binary."""
    with path.open("rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return None
        phoff = struct.unpack_from("<Q", header, 32)[0]
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        for i in range(phnum):
            handle.seek(phoff + i * phentsize)
            p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack("<IIQQQQ", handle.read(40))
            if p_type == 3:  # PT_INTERP
                handle.seek(p_offset)
                return handle.read(p_filesz).rstrip(b"\0").decode(errors="replace")
    return None


# --------------------------------------------------------------------------------------------------
# Engines


@dataclass(frozen=True)
class Engine:
    """One Docker engine of the fleet: a separate dockerd, i.e. one "host" of the tests."""

    index: int
    name: str
    state_dir: Path
    socket_path: Path
    url: str
    address: str

    @classmethod
    def at(cls, index: int, root: Path | None = None) -> Engine:
        """The engine with this 1-based index under ``root`` (default: ``fleet_root()``)."""
        if index < 1 or index > 254:
            raise ValueError(f"engine index must be in 1..254, got {index}")
        state_dir = (root or fleet_root()) / f"host{index}"
        socket_path = state_dir / "docker.sock"
        longest = str(state_dir) + _LONGEST_SOCKET_SUFFIX
        if len(longest) >= _MAX_SOCKET_PATH:
            raise FleetError(
                f"fleet root {state_dir.parent} is too long for unix socket paths ({longest!r} would be "
                f"{len(longest)} chars, limit {_MAX_SOCKET_PATH}); set {ROOT_ENV} to a shorter folder"
            )
        return cls(
            index=index,
            name=f"host{index}",
            state_dir=state_dir,
            socket_path=socket_path,
            url=f"unix://{socket_path}",
            address=f"{fleet_net()}.{index}",
        )

    # Paths ------------------------------------------------------------------------------------

    @property
    def data_root(self) -> Path:
        return self.state_dir / "data"

    @property
    def exec_root(self) -> Path:
        return self.state_dir / "exec"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "docker.pid"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "dockerd.log"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "daemon.json"

    # State ------------------------------------------------------------------------------------

    def client(self) -> docker.DockerClient:
        """A docker-py client for this engine (API version negotiated, timeout 30 s)."""
        return docker.DockerClient(base_url=self.url, timeout=CLIENT_TIMEOUT)

    def pid(self) -> int | None:
        """The pid of this engine's dockerd if its pidfile names a live dockerd, else None."""
        pid = _read_pid(self.pidfile)
        if pid is None or not _pid_alive(pid):
            return None
        cmdline = _pid_cmdline(pid)
        if not cmdline or not cmdline[0].endswith("dockerd"):
            # a recycled pid that is not a dockerd; a kernel thread's cmdline is empty (seen: a
            # kworker had taken the pid of a dockerd killed with the machine's previous run)
            return None
        return pid

    def ping(self, timeout: float = 2.0) -> bool:
        """True if the engine answers ``/_ping`` on its socket."""
        return _unix_ping(self.socket_path, timeout)

    def is_running(self) -> bool:
        """True if this engine's dockerd is alive and answers ``/_ping``."""
        return self.pid() is not None and self.ping()

    def log_tail(self, lines: int = 25, *, verbose: bool = False) -> str:
        """The last lines dockerd wrote since its latest start by this module.

        Unless ``verbose``, info and debug lines (dockerd and containerd are chatty) are left
        out: what remains are warnings, errors and the final "failed to start daemon" message.
        """
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no dockerd.log)"
        start = text.rfind(_START_MARKER)
        if start >= 0:
            text = text[start:]
        kept = [
            line
            for line in text.splitlines()
            if verbose or not any(f"level={level}" in line for level in ("info", "debug", "trace"))
        ]
        return "\n".join(kept[-lines:])

    def command(self) -> list[str]:
        """The dockerd command line for this engine."""
        return [
            shutil.which("dockerd") or "dockerd",
            "-H",
            self.url,
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.pidfile),
            # An empty config of its own: never pick up /etc/docker/daemon.json of the machine.
            "--config-file",
            str(self.config_file),
            "--storage-driver",
            storage_driver_for(self.state_dir),
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
        ]

    # Lifecycle ----------------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start this engine's dockerd (reusing its folders) and wait until it answers /_ping.

        Does nothing if it is already running. Raises FleetError, with the tail of dockerd.log,
        if it does not answer within ``timeout`` seconds or exits early.
        """
        with _file_lock(self.state_dir / "fleet.lock"):
            if self.is_running():
                return
            pid = self.pid()
            if pid is None:
                pid = self._spawn()
            self._wait_ready(pid, timeout)

    def _spawn(self) -> int:
        require_tools()
        for folder in (self.state_dir, self.data_root, self.exec_root):
            folder.mkdir(parents=True, exist_ok=True)
        if not self.config_file.exists():
            self.config_file.write_text("{}\n")
        # A pidfile of a dead dockerd (or a recycled pid) would make dockerd refuse to start.
        self.pidfile.unlink(missing_ok=True)
        self._clear_leftovers()
        if self.log_path.exists() and self.log_path.stat().st_size > _LOG_ROTATE_BYTES:
            self.log_path.replace(self.log_path.with_suffix(".log.1"))
        command = self.command()
        with self.log_path.open("ab") as log:
            log.write(f"\n{_START_MARKER} at {time.strftime('%F %T')}: {' '.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own session: no terminal signals from our shell
                close_fds=True,
            )
        _CHILDREN[process.pid] = process
        return process.pid

    def _clear_leftovers(self) -> None:
        """Clean up after a dockerd that was killed (SIGKILL, or a machine that ended every process).

        * Its containerd may still run (orphaned), or have died only just (a zombie not yet reaped,
          whose pid still "exists"): dockerd would then try to reuse it and give up after a
          timeout with "failed to start containerd". Stop such a containerd and drop the pidfile,
          so dockerd starts a fresh one.
        * Container processes whose shim was killed too keep running, orphaned, and would keep
          holding ports on the host's loopback address. Kill the processes in the cgroup of every
          container of this engine that has no live shim (one with a shim is restored by dockerd).
        """
        containerd_pidfile = self.exec_root / "containerd" / "containerd.pid"
        containerd_pid = _read_pid(containerd_pidfile)
        if containerd_pid is not None:
            if _pid_alive(containerd_pid) and str(self.exec_root) in " ".join(_pid_cmdline(containerd_pid)):
                _terminate(containerd_pid)
            containerd_pidfile.unlink(missing_ok=True)
        containers_dir = self.data_root / "containers"
        if not containers_dir.is_dir():
            return
        shim_ids = set()
        for cmdline in _all_cmdlines():
            if cmdline[0].endswith("containerd-shim-runc-v2") and str(self.exec_root) in " ".join(cmdline):
                with contextlib.suppress(ValueError, IndexError):
                    shim_ids.add(cmdline[cmdline.index("-id") + 1])
        for container_dir in containers_dir.iterdir():
            if container_dir.name in shim_ids:
                continue
            for pid in _cgroup_pids(container_dir.name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _wait_ready(self, pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                raise FleetError(
                    f"dockerd for {self.name} ({self.url}) exited during start-up; "
                    f"tail of {self.log_path}:\n{self.log_tail()}"
                )
            if self.ping():
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        raise FleetError(
            f"dockerd for {self.name} (pid {pid}) did not answer /_ping on {self.url} within "
            f"{timeout:.0f} s; tail of {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop this engine: SIGTERM to its dockerd (from its pidfile), wait until it is gone.

        This is a host going down. dockerd stops its running containers on the way out (the
        stand-ins exit at once on SIGTERM); a later ``start()`` with the same folders brings
        them back as they were listed. Does nothing if the engine is not running.
        """
        with _file_lock(self.state_dir / "fleet.lock"):
            pid = self.pid()
            if pid is None:
                return
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid):
                if time.monotonic() > deadline:
                    raise FleetError(
                        f"dockerd for {self.name} (pid {pid}) still running {timeout:.0f} s after "
                        f"SIGTERM; tail of {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def storage_driver(self) -> str:
        """The storage driver the running engine reports."""
        with contextlib.closing(self.client()) as client:
            return str(client.info()["Driver"])


def engines(n: int, root: Path | None = None) -> list[Engine]:
    """Engines 1..n under ``root`` (default ``fleet_root()``), without starting anything."""
    return [Engine.at(i, root) for i in range(1, n + 1)]


def existing_engines(root: Path | None = None) -> list[Engine]:
    """Every engine that has a state folder under ``root``, by index."""
    base = root or fleet_root()
    found: list[Engine] = []
    if base.is_dir():
        for child in base.iterdir():
            suffix = child.name.removeprefix("host")
            if child.is_dir() and suffix != child.name and suffix.isdigit():
                found.append(Engine.at(int(suffix), base))
    return sorted(found, key=lambda e: e.index)


def _parallel(func: Callable[[Engine], object], items: Sequence[Engine], what: str) -> None:
    """Run ``func(engine)`` for every engine at once; raise one FleetError naming every failure."""
    if not items:
        return
    errors: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = {pool.submit(func, engine): engine for engine in items}
        for future in concurrent.futures.as_completed(futures):
            error = future.exception()
            if error is not None:
                errors.append(f"{futures[future].name}: {error}")
    if errors:
        raise FleetError(f"{what} failed:\n" + "\n".join(sorted(errors)))


def ensure_engines(n: int = DEFAULT_ENGINES, root: Path | None = None) -> list[Engine]:
    """Engines 1..n running and answering /_ping (started in parallel; running ones reused)."""
    if n < 1:
        raise ValueError(f"need at least one engine, got {n}")
    require_tools()
    fleet = engines(n, root)
    _parallel(Engine.start, fleet, "starting the Docker test engines")
    return fleet


def stop_engines(fleet: Sequence[Engine]) -> None:
    """Stop the given engines in parallel."""
    _parallel(Engine.stop, fleet, "stopping the Docker test engines")


# --------------------------------------------------------------------------------------------------
# Stand-in images


def _add_file(archive: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    archive.addfile(info, io.BytesIO(data))


def _build_context(dockerfile: str) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        _add_file(archive, "Dockerfile", dockerfile.encode(), 0o644)
        _add_file(archive, "busybox", BUSYBOX.read_bytes(), 0o755)
        _add_file(archive, "standin-entrypoint", ENTRYPOINT_SCRIPT.encode(), 0o755)
    buffer.seek(0)
    return buffer


def _local_tags(client: docker.DockerClient) -> set[str]:
    return {tag for image in client.images.list() for tag in image.tags}


def build_image(client: docker.DockerClient, context: io.BytesIO, tag: str, where: str = "") -> str:
    """``docker build -t TAG`` of a tar context (classic builder, no network); the build's output.
    FleetError with the output's tail when the build fails."""
    output: list[str] = []
    for chunk in client.api.build(
        fileobj=context,
        custom_context=True,
        tag=tag,
        rm=True,
        forcerm=True,
        network_mode="none",
        decode=True,
    ):
        if "error" in chunk:
            raise FleetError(f"building {tag}{where} failed: {chunk['error']}\n{''.join(output)[-2000:]}")
        output.append(str(chunk.get("stream", "")))
    return "".join(output)


def build_standin_image(client: docker.DockerClient, tag: str) -> None:
    """Build one stand-in image on the engine behind ``client``."""
    build_image(client, _build_context(STANDIN_DOCKERFILES[tag]), tag)


def _copy_images(source: Engine, target: Engine, tags: Sequence[str]) -> None:
    """``docker save TAGS | docker -H target load``, streamed, without a temporary file."""
    with contextlib.closing(source.client()) as src, contextlib.closing(target.client()) as dst:
        response = src.api._get(src.api._url("/images/get"), params={"names": list(tags)}, stream=True)
        src.api._raise_for_status(response)
        result = dst.api._post(
            dst.api._url("/images/load"), data=response.iter_content(64 * 1024), params={"quiet": True}
        )
        dst.api._raise_for_status(result)
        missing = set(tags) - _local_tags(dst)
        if missing:
            raise FleetError(f"loading {sorted(missing)} into {target.name} did not tag them: {result.text}")


def ensure_standin_images(fleet: Sequence[Engine], tags: Sequence[str] = STANDIN_IMAGES) -> None:
    """Make sure every engine has the stand-in images; a tag already present is left alone.

    Missing tags are built on one engine (the build cache shares the busybox layers between the
    three images) and then streamed to the others with save/load, all targets in parallel;
    that measured faster than building on every engine (see ``--compare`` in the CLI).
    """
    if not fleet:
        return
    problems = _busybox_problems()
    if problems:
        raise FleetError("cannot build the stand-in images: " + "; ".join(problems))
    root = fleet[0].state_dir.parent
    with _file_lock(root / "images.lock"):
        missing: dict[int, list[str]] = {}
        for engine in fleet:
            with contextlib.closing(engine.client()) as client:
                present = _local_tags(client)
            lacking = [tag for tag in tags if tag not in present]
            if lacking:
                missing[engine.index] = lacking
        if not missing:
            return
        complete = [engine for engine in fleet if engine.index not in missing]
        if complete:
            source = complete[0]
        else:
            source = fleet[0]
            with contextlib.closing(source.client()) as client:
                for tag in missing[source.index]:
                    build_standin_image(client, tag)
            del missing[source.index]
        targets = [engine for engine in fleet if engine.index in missing]
        _parallel(lambda e: _copy_images(source, e, missing[e.index]), targets, "copying stand-in images")


def build_standin_images_everywhere(fleet: Sequence[Engine], tags: Sequence[str] = STANDIN_IMAGES) -> None:
    """The alternative to save/load: build every tag on every engine, engines in parallel."""

    def build_all(engine: Engine) -> None:
        with contextlib.closing(engine.client()) as client:
            for tag in tags:
                build_standin_image(client, tag)

    _parallel(build_all, fleet, "building stand-in images")


def remove_all_containers(engine: Engine) -> None:
    """Force-remove every container (running or not, with anonymous volumes) on one engine."""
    with contextlib.closing(engine.client()) as client:
        for container in client.containers.list(all=True, ignore_removed=True):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)


def remove_containers(fleet: Sequence[Engine]) -> None:
    """Remove every container on the given (running) engines, in parallel."""
    _parallel(remove_all_containers, fleet, "removing the containers of the Docker test engines")


def reset_engines(fleet: Sequence[Engine]) -> None:
    """Start any engine that is down, then remove every container on every engine (in parallel)."""

    def reset(engine: Engine) -> None:
        engine.start()
        remove_all_containers(engine)

    _parallel(reset, fleet, "resetting the Docker test engines")


# --------------------------------------------------------------------------------------------------
# Command line


def _status(root: Path) -> int:
    found = existing_engines(root)
    if not found:
        print(f"no engines under {root}")
        return 0
    print(f"fleet root {root}")
    for engine in found:
        pid = engine.pid()
        running = pid is not None and engine.ping()
        state = "up" if running else "down"
        line = f"{engine.name:7} {engine.address:12} {state:4} pid={pid or '-':<8} {engine.url}"
        if running:
            with contextlib.closing(engine.client()) as client:
                info = client.info()
                tags = _local_tags(client)
            have = sum(tag in tags for tag in STANDIN_IMAGES)
            line += (
                f"  driver={info['Driver']} containers={info['Containers']}"
                f" (running {info['ContainersRunning']}) standin-images={have}/{len(STANDIN_IMAGES)}"
            )
        print(line)
    return 0


def _up(root: Path, count: int, images: bool, compare: bool) -> int:
    started = time.monotonic()
    fleet = ensure_engines(count, root)
    engines_done = time.monotonic()
    print(f"{count} engine(s) answering /_ping after {engines_done - started:.2f} s")
    if compare:
        _compare_image_strategies(fleet)
    if images:
        ensure_standin_images(fleet)
        print(f"stand-in images present after {time.monotonic() - engines_done:.2f} s")
    for engine in fleet:
        print(f"{engine.name} {engine.address} {engine.url}")
    return 0


def _remove_standins(fleet: Sequence[Engine]) -> None:
    def remove(engine: Engine) -> None:
        with contextlib.closing(engine.client()) as client:
            for tag in STANDIN_IMAGES:
                with contextlib.suppress(docker.errors.ImageNotFound):
                    client.images.remove(tag, force=True)
            client.images.prune(filters={"dangling": False})
            client.api.prune_builds()

    _parallel(remove, fleet, "removing stand-in images")


def _compare_image_strategies(fleet: Sequence[Engine]) -> None:
    """Time both ways to get the images onto every engine, each from nothing (removes them)."""
    for name, strategy in (
        ("build on one + save/load", ensure_standin_images),
        ("build on every engine", build_standin_images_everywhere),
    ):
        _remove_standins(fleet)
        started = time.monotonic()
        strategy(fleet)
        print(f"{name}: {time.monotonic() - started:.2f} s")


def _unmount_below(root: Path) -> None:
    """Detach every mount at or below ``root``, deepest first.

    dockerd bind-mounts its data root onto itself (and the exec root's netns/default) and leaves
    those mounts in place when it exits, so the folders cannot simply be deleted.
    """
    prefix = str(root.resolve())
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].replace("\\040", " ")
        if mount_point == prefix or mount_point.startswith(prefix + "/"):
            mounts.append(mount_point)
    libc = ctypes.CDLL(None, use_errno=True)
    for mount_point in sorted(mounts, key=len, reverse=True):
        if libc.umount2(mount_point.encode(), _MNT_DETACH) != 0:
            error = ctypes.get_errno()
            raise FleetError(f"cannot unmount {mount_point}: {os.strerror(error)}")


def _down(root: Path, purge: bool) -> int:
    found = existing_engines(root)
    stop_engines(found)
    print(f"stopped {len(found)} engine(s) under {root}")
    if purge and root.exists():
        _unmount_below(root)
        shutil.rmtree(root)
        print(f"removed {root}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", type=Path, default=None, help=f"fleet root (default ${ROOT_ENV} or {DEFAULT_ROOT})"
    )
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="start (or reuse) engines 1..N and build the stand-in images")
    up.add_argument("--engines", type=int, default=DEFAULT_ENGINES)
    up.add_argument("--no-images", action="store_true", help="do not build the stand-in images")
    up.add_argument("--compare", action="store_true", help="time save/load against building everywhere")
    down = sub.add_parser("down", help="stop every engine under the root")
    down.add_argument("--purge", action="store_true", help="also delete the root with all engine data")
    sub.add_parser("status", help="show the engines under the root")
    sub.add_parser("env", help="print the engines' URLs as JSON")
    args = parser.parse_args(argv)
    root: Path = args.root or fleet_root()
    try:
        if args.action == "up":
            return _up(root, args.engines, not args.no_images, args.compare)
        if args.action == "down":
            return _down(root, args.purge)
        if args.action == "env":
            print(json.dumps({e.name: {"url": e.url, "address": e.address} for e in existing_engines(root)}))
            return 0
        return _status(root)
    except FleetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())


def fleet_topology(
    engines: Sequence[Engine],
    data_root: Path,
    cluster: str,
    *,
    servers: int = 1,
    consul_image: str = AGENT_IMAGE_1,
    registrator_image: str = STANDIN_REGISTRATOR_1,
    gates: bool = True,
) -> dict[str, object]:
    """A topology document over these engines: the first ``servers`` are servers, the rest clients.

    By default the agents are the agent stand-in (Consul's HTTP API on each host's own loopback
    address) and the rollout is gated, as in production; ``gates=False`` only with an image that has no
    Consul API (the busybox stand-ins)."""
    rollout: dict[str, object] = {"gates": gates}
    if gates:
        rollout |= {"deadline": 60, "stabilization": 1, "agent_timeout": 30}
    return {
        "cluster": cluster,
        "consul": {"image": consul_image},
        "registrator": {"image": registrator_image},
        "rollout": rollout,
        "hosts": [
            {
                "name": e.name,
                "docker": e.url,
                "advertise": e.address,
                "client_address": e.address,  # each agent's HTTP API on its host's own address
                "role": "server" if i < servers else "client",
                "data_dir": str(data_root / f"data-{e.name}"),
                # a bound for a host that hangs, not a latency target: on this 2-core machine a create
                # took over 15 s while two test sessions started real Consul clusters; 30 s is what a
                # slow production host would be given too
                "timeout": 30,
            }
            for i, e in enumerate(engines)
        ],
    }
