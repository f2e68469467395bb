"""A local Debian 12 + Python base image for building the controller's own image in tests.

No registry is reachable here, so ``python:3.11-slim`` cannot be pulled. Instead this module makes
``consul-reconciler-test/python-base:bookworm`` from Debian packages, fetched by ``debootstrap``
from the Debian mirror apt already uses on this machine::

    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \\
        bookworm ROOT <mirror>
    tar -C ROOT -c . | docker import - consul-reconciler-test/python-base:bookworm

Bookworm's python3 is 3.11, the same minor version as ``python:3.11-slim``, so the Dockerfile's
default base and this one run the same interpreter.

The root file system tarball is cached under ``$CR_CACHE_DIR`` (default /tmp/crcache), outside
any fleet root, so ``python -m testbed.fleet down --purge`` keeps it and a second engine, fleet or
test session imports it again in seconds instead of re-running debootstrap (about 40 s). An engine
that already has the tag is left alone; an engine that lacks it gets a copy by save/load from one
that has it (same image id everywhere), else an import of the cached tarball.

The tarball also carries this machine's own extra CA certificates (``/usr/local/share/
ca-certificates``): where HTTPS leaves the machine through an intercepting proxy, pip inside an
image build (``network_mode="host"``) must trust the same CAs as pip on the machine. The image is
local to the test engines and never pushed anywhere.

Command line (builds the tarball and imports it into the engines of the current fleet root)::

    python -m testbed.baseimage [--engines N] [--rebuild]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import docker
import docker.errors

from testbed.fleet import (
    Engine,
    FleetError,
    _copy_images,
    _file_lock,
    _local_tags,
    _parallel,
    _unmount_below,
    ensure_engines,
)

BASE_IMAGE = "consul-reconciler-test/python-base:bookworm"
SUITE = "bookworm"
PACKAGES: tuple[str, ...] = ("python3", "python3-venv", "python3-pip", "ca-certificates")
CACHE_ENV = "CR_CACHE_DIR"
DEFAULT_CACHE_DIR = "/tmp/crcache"
TARBALL_NAME = f"python-base-{SUITE}.tar"
# Settings the import gives the image, as ``docker import --change`` would (python:3.11-slim sets
# the same LANG; without a CMD the image could not be run without naming a command).
IMPORT_CHANGES: tuple[str, ...] = ("ENV LANG=C.UTF-8", 'CMD ["python3"]')
# Left out of the tarball: the downloaded .debs and apt's package lists (apt-get update brings
# them back), documentation and manual pages. What remains is what a program needs to run.
TAR_EXCLUDES: tuple[str, ...] = (
    "./var/cache/apt/archives/*.deb",
    "./var/cache/apt/*.bin",
    "./var/lib/apt/lists/*_*",
    "./usr/share/doc/*",
    "./usr/share/man/*",
    "./usr/share/info/*",
)
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
SOURCES_LIST = Path("/etc/apt/sources.list")
SOURCES_DIR = Path("/etc/apt/sources.list.d")
DEBOOTSTRAP_TIMEOUT = 900
IMPORT_TIMEOUT = 600

# Seconds spent in each step by this process, for reports ("debootstrap", "tar", "import", "copy").
TIMINGS: dict[str, float] = {}


def cache_dir() -> Path:
    """Where the debootstrap tarball is kept (``$CR_CACHE_DIR`` or /tmp/crcache)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def tarball_path() -> Path:
    return cache_dir() / TARBALL_NAME


# --------------------------------------------------------------------------------------------------
# The Debian mirror apt uses


def _one_line_entries(text: str) -> list[tuple[str, list[str]]]:
    """``deb [options] URI SUITE COMPONENT...`` lines as (uri, [suite])."""
    entries: list[tuple[str, list[str]]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line)  # [arch=amd64 signed-by=...]
        fields = line.split()
        if len(fields) >= 3:
            entries.append((fields[1], [fields[2]]))
    return entries


def _deb822_entries(text: str) -> list[tuple[str, list[str]]]:
    """Stanzas of a ``.sources`` file (deb822) as (uri, suites), one per URI."""
    entries: list[tuple[str, list[str]]] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        suites = fields.get("suites", "").split()
        entries.extend((uri, suites) for uri in fields.get("uris", "").split())
    return entries


def debian_mirror(suite: str = SUITE) -> str:
    """The URI of the first apt source on this machine that serves ``suite`` itself.

    Reads /etc/apt/sources.list and the ``*.list`` / ``*.sources`` files in sources.list.d (the
    files apt reads; ``*.disabled`` and the like are skipped, as apt skips them). Security and
    updates suites (``bookworm-security``) do not count: debootstrap needs the release suite.
    """
    files = [SOURCES_LIST] if SOURCES_LIST.is_file() else []
    if SOURCES_DIR.is_dir():
        files += sorted(p for p in SOURCES_DIR.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        entries = _deb822_entries(text) if path.suffix == ".sources" else _one_line_entries(text)
        for uri, suites in entries:
            if suite in suites and uri.startswith(("http://", "https://", "file:/")):
                return uri
    raise FleetError(
        f"no apt source for Debian {suite!r} in {SOURCES_LIST} or {SOURCES_DIR}/*.list|*.sources; "
        "debootstrap needs the mirror apt uses"
    )


# --------------------------------------------------------------------------------------------------
# debootstrap


def _debootstrap_binary() -> str | None:
    return shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if os.access("/usr/sbin/debootstrap", os.X_OK) else None
    )


def ensure_debootstrap() -> str:
    """The debootstrap executable, installed with apt-get first when missing (needs root)."""
    found = _debootstrap_binary()
    if found:
        return found
    if os.geteuid() != 0:
        raise FleetError("debootstrap is not installed (apt-get install -y debootstrap, as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "debootstrap"]):
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise FleetError(f"{' '.join(command)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    found = _debootstrap_binary()
    if not found:
        raise FleetError("apt-get installed debootstrap but it is not on PATH or in /usr/sbin")
    return found


def _add_local_cas(root: Path) -> None:
    """Give the root file system this machine's extra CA certificates and rebuild its bundle."""
    local = sorted(LOCAL_CA_DIR.glob("*.crt")) if LOCAL_CA_DIR.is_dir() else []
    if not local:
        return
    target = root / LOCAL_CA_DIR.relative_to("/")
    target.mkdir(parents=True, exist_ok=True)
    for cert in local:
        shutil.copy2(cert, target / cert.name)
    proc = subprocess.run(
        ["chroot", str(root), "update-ca-certificates"], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise FleetError(f"update-ca-certificates in {root} failed:\n{proc.stdout}{proc.stderr}")


def _run_debootstrap(root: Path, log: Path) -> None:
    mirror = debian_mirror()
    command = [
        ensure_debootstrap(),
        "--variant=minbase",
        "--include=" + ",".join(PACKAGES),
        SUITE,
        str(root),
        mirror,
    ]
    with log.open("wb") as out:
        out.write(f"$ {' '.join(command)}\n".encode())
        out.flush()
        proc = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, timeout=DEBOOTSTRAP_TIMEOUT, check=False
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        debootstrap_log = root / "debootstrap" / "debootstrap.log"
        if debootstrap_log.is_file():
            tail += "\n--- debootstrap.log ---\n" + "\n".join(
                debootstrap_log.read_text(errors="replace").splitlines()[-25:]
            )
        raise FleetError(f"debootstrap of {SUITE} from {mirror} failed (exit {proc.returncode}):\n{tail}")


def ensure_tarball(rebuild: bool = False) -> Path:
    """The cached root file system tarball, made with debootstrap when missing.

    Serialised with a lock in the cache folder, so two sessions do not debootstrap at once; a
    tarball appears under its final name only when complete.
    """
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tarball = tarball_path()
    with _file_lock(cache / "python-base.lock"):
        if tarball.is_file() and not rebuild:
            return tarball
        work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=cache))
        root = work / "root"
        try:
            started = time.monotonic()
            _run_debootstrap(root, cache / "debootstrap.log")
            _add_local_cas(root)
            TIMINGS["debootstrap"] = time.monotonic() - started
            started = time.monotonic()
            partial = tarball.with_suffix(".tar.partial")
            command = ["tar", "-C", str(root), *(f"--exclude={p}" for p in TAR_EXCLUDES)]
            command += ["--numeric-owner", "-cf", str(partial), "."]
            proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                partial.unlink(missing_ok=True)
                raise FleetError(f"tar of {root} failed:\n{proc.stderr[-2000:]}")
            partial.replace(tarball)
            TIMINGS["tar"] = time.monotonic() - started
        finally:
            # debootstrap mounts /proc and /sys inside the root while it installs; a failed run
            # can leave them mounted, and rmtree would then walk into the host's /proc.
            _unmount_below(work)
            shutil.rmtree(work, ignore_errors=True)
    return tarball


# --------------------------------------------------------------------------------------------------
# Images on the engines


def _big_client(engine: Engine) -> docker.DockerClient:
    """A client for long requests (an import of a few hundred MB, an image build)."""
    return docker.DockerClient(base_url=engine.url, timeout=IMPORT_TIMEOUT)


def has_image(engine: Engine, tag: str = BASE_IMAGE) -> bool:
    with contextlib.closing(engine.client()) as client:
        return tag in _local_tags(client)


def import_tarball(engine: Engine, tarball: Path, tag: str = BASE_IMAGE) -> None:
    """``docker -H engine import --change ... TARBALL TAG``, streaming the file."""
    repository, _, version = tag.rpartition(":")
    started = time.monotonic()
    with contextlib.closing(_big_client(engine)) as client, tarball.open("rb") as data:
        previous: str | None = None
        with contextlib.suppress(docker.errors.ImageNotFound):
            previous = client.images.get(tag).id
        client.api.import_image(src=data, repository=repository, tag=version, changes=list(IMPORT_CHANGES))
        if tag not in _local_tags(client):
            raise FleetError(f"importing {tarball} into {engine.name} did not tag {tag}")
        if previous is not None and previous != client.images.get(tag).id:
            # Replaced (--rebuild): drop the old one unless images built on it still need it.
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(previous)
    TIMINGS["import"] = time.monotonic() - started


def ensure_base_image(fleet: Sequence[Engine], tag: str = BASE_IMAGE, *, replace: bool = False) -> str:
    """Make sure every given engine has the base image; returns its tag.

    Engines that have the tag are left alone (unless ``replace``: all get the cached tarball's
    image again). If none has it, the cached tarball (debootstrap on first use) is imported into
    the first engine; the rest get a save/load copy of it.
    """
    if not fleet:
        return tag
    lock_root = fleet[0].state_dir.parent
    with _file_lock(lock_root / "baseimage.lock"):
        lacking = [engine for engine in fleet if replace or not has_image(engine, tag)]
        if not lacking:
            return tag
        having = [engine for engine in fleet if engine not in lacking]
        if having:
            source = having[0]
        else:
            source = lacking.pop(0)
            import_tarball(source, ensure_tarball(), tag)
        started = time.monotonic()
        _parallel(lambda target: _copy_images(source, target, [tag]), lacking, f"copying {tag}")
        if lacking:
            TIMINGS["copy"] = time.monotonic() - started
    return tag


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.baseimage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", type=int, default=1, help="engines 1..N of the fleet root to supply")
    parser.add_argument("--rebuild", action="store_true", help="run debootstrap again (new tarball)")
    args = parser.parse_args(argv)
    try:
        if args.rebuild:
            ensure_tarball(rebuild=True)
        fleet = ensure_engines(args.engines)
        ensure_base_image(fleet, replace=args.rebuild)
    except FleetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for step, seconds in TIMINGS.items():
        print(f"{step}: {seconds:.1f} s")
    print(f"{BASE_IMAGE} on {', '.join(e.name for e in fleet)} ({tarball_path()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
