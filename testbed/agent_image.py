"""Images of the Consul agent stand-in (testbed/agent_standin.py: a model of Consul, not Consul).

``consul-reconciler-standin/consul-agent:1`` and ``:2`` are built ``FROM`` the Debian + Python base
image of testbed/baseimage.py (made offline with debootstrap, cached in /tmp/crcache), with
``/agent_standin.py`` as the entrypoint (``python3 -u /agent_standin.py``) and /consul/data,
/consul/config made. The two tags are distinct images, so an upgrade from one to the other is a
real image change: their labels differ, and so do the versions the agents report (STANDIN_VERSION
``1.20.0-standin`` for :1, ``1.20.1-standin`` for :2, seen in /v1/agent/self and in autopilot).

Each image carries the SHA-256 of agent_standin.py and its Dockerfile as a label: an engine whose tag
was built from another version of either counts as lacking it (the superseded image is removed once replaced,
unless a container still uses it). A tag that no engine has current is built once, on the first
engine (after the base image is put there); engines lacking a tag get it by save/load, in
parallel, as testbed/fleet.py does for its stand-ins. The build needs no network
(``network_mode="none"``). ``ensure_agent_image(engines)`` supplies both tags (and returns :1);
``ensure_agent_images(engines, tags)`` only the tags given.

Command line::

    python -m testbed.agent_image [--engines N]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

import docker
import docker.errors

from testbed.baseimage import BASE_IMAGE, IMPORT_TIMEOUT, ensure_base_image
from testbed.fleet import (
    AGENT_IMAGE_1,
    AGENT_IMAGE_2,
    STANDIN_LABEL,
    Engine,
    FleetError,
    _copy_images,
    _file_lock,
    _parallel,
    build_image,
    ensure_engines,
)

AGENT_IMAGES: tuple[str, ...] = (AGENT_IMAGE_1, AGENT_IMAGE_2)
AGENT_VERSIONS = {AGENT_IMAGE_1: "1.20.0-standin", AGENT_IMAGE_2: "1.20.1-standin"}
SOURCE = Path(__file__).resolve().parent / "agent_standin.py"
SOURCE_LABEL = f"{STANDIN_LABEL}.source-sha256"

DOCKERFILE = """FROM {base}
RUN mkdir -p /consul/data /consul/config
COPY agent_standin.py /agent_standin.py
ENV STANDIN_VERSION={version}
# raft at Consul's recommended production setting, performance.raft_multiplier = 1 (heartbeat 1 s)
ENV STANDIN_RAFT_MULTIPLIER=1
LABEL {label}="consul-agent" {label}.version="{tag_version}" {source_label}="{digest}"
ENTRYPOINT ["python3", "-u", "/agent_standin.py"]
"""


def source_digest() -> str:
    """Of agent_standin.py and of the Dockerfile: a change to either makes the images stale."""
    return hashlib.sha256(SOURCE.read_bytes() + DOCKERFILE.encode()).hexdigest()


def dockerfile(tag: str, base: str = BASE_IMAGE) -> str:
    return DOCKERFILE.format(
        base=base,
        version=AGENT_VERSIONS.get(tag, "1.20.0-standin"),
        label=STANDIN_LABEL,
        tag_version=tag.rpartition(":")[2],
        source_label=SOURCE_LABEL,
        digest=source_digest(),
    )


def _context(tag: str, base: str) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data, mode in (
            ("Dockerfile", dockerfile(tag, base).encode(), 0o644),
            ("agent_standin.py", SOURCE.read_bytes(), 0o644),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def is_current(engine: Engine, tag: str) -> bool:
    """The engine has ``tag``, built from this agent_standin.py."""
    with contextlib.closing(engine.client()) as client:
        try:
            labels = client.images.get(tag).labels or {}
        except docker.errors.ImageNotFound:
            return False
    return labels.get(SOURCE_LABEL) == source_digest()


def build_agent_image(engine: Engine, tag: str, base: str = BASE_IMAGE) -> None:
    """``docker build -t TAG`` of the stand-in on one engine (which must have ``base``)."""
    with contextlib.closing(docker.DockerClient(base_url=engine.url, timeout=IMPORT_TIMEOUT)) as client:
        output = build_image(client, _context(tag, base), tag, f" on {engine.name}")
    if not is_current(engine, tag):
        raise FleetError(f"building {tag} on {engine.name} did not tag a current image:\n{output}")


def _copy_from(source: Engine, tag: str, target: Engine) -> None:
    _copy_images(source, target, [tag])


def ensure_agent_image(engines: Sequence[Engine], tag: str = AGENT_IMAGE_1) -> str:
    """Make sure every engine has ``tag`` and both standard tags (:1 and :2, so that an upgrade from
    one to the other can be run at once), built from the current agent_standin.py; returns ``tag``."""
    ensure_agent_images(engines, tuple(dict.fromkeys((tag, *AGENT_IMAGES))))
    return tag


def ensure_agent_images(engines: Sequence[Engine], tags: Sequence[str] = AGENT_IMAGES) -> list[str]:
    """``ensure_agent_image`` for several tags: built once (on one engine), copied to the others."""
    if not engines:
        return list(tags)
    with _file_lock(engines[0].state_dir.parent / "agentimage.lock"):
        lacking = {e.index: [t for t in tags if not is_current(e, t)] for e in engines}
        superseded = {e.index: [i for t in lacking[e.index] if (i := _image_id(e, t))] for e in engines}
        for tag in tags:
            having = [e for e in engines if tag not in lacking[e.index]]
            if having:
                source = having[0]
            else:
                source = engines[0]
                ensure_base_image([source])
                build_agent_image(source, tag)
                lacking[source.index].remove(tag)
            targets = [e for e in engines if tag in lacking[e.index]]
            _parallel(functools.partial(_copy_from, source, tag), targets, f"copying {tag}")
        for engine in engines:  # images of an older agent_standin.py, unless still used
            with contextlib.closing(engine.client()) as client:
                for image_id in superseded[engine.index]:
                    with contextlib.suppress(docker.errors.APIError):
                        client.images.remove(image_id)
    return list(tags)


# The same agents with Consul's ACLs on (default deny) and a management token, baked into the image's
# config folder as an operator may bake a config file into theirs: /consul/config/acl.json.
ACL_TOKEN = "8a1d5ec0-5a1e-4c1d-9a11-7e57acl70ce7"  # the test cluster's management token (a test secret)
AGENT_ACL_IMAGES = {
    "consul-reconciler-standin/consul-agent-acl:1": AGENT_IMAGE_1,
    "consul-reconciler-standin/consul-agent-acl:2": AGENT_IMAGE_2,
}
_ACL_CONFIG = {
    "acl": {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": ACL_TOKEN}}
}
_ACL_DOCKERFILE = """FROM {base}
COPY acl.json /consul/config/acl.json
LABEL {source_label}="{digest}"
"""


def _acl_digest() -> str:
    return hashlib.sha256((source_digest() + _ACL_DOCKERFILE + json.dumps(_ACL_CONFIG)).encode()).hexdigest()


def ensure_acl_agent_images(engines: Sequence[Engine]) -> tuple[str, str]:
    """The ACL variants of both agent images on every engine (a small layer on each, built in place)."""
    ensure_agent_images(engines)
    digest = _acl_digest()

    def build(engine: Engine) -> None:
        with contextlib.closing(engine.client()) as client:
            for tag, base in AGENT_ACL_IMAGES.items():
                try:
                    if (client.images.get(tag).labels or {}).get(SOURCE_LABEL) == digest:
                        continue
                except docker.errors.ImageNotFound:
                    pass
                buffer = io.BytesIO()
                dockerfile_text = _ACL_DOCKERFILE.format(base=base, source_label=SOURCE_LABEL, digest=digest)
                with tarfile.open(fileobj=buffer, mode="w") as archive:
                    for name, text in (
                        ("Dockerfile", dockerfile_text),
                        ("acl.json", json.dumps(_ACL_CONFIG)),
                    ):
                        data = text.encode()
                        info = tarfile.TarInfo(name)
                        info.size, info.mode, info.mtime = len(data), 0o644, 0
                        archive.addfile(info, io.BytesIO(data))
                buffer.seek(0)
                build_image(client, buffer, tag, f" on {engine.name}")

    _parallel(build, engines, "building the ACL agent images")
    first, second = AGENT_ACL_IMAGES
    return first, second


def _image_id(engine: Engine, tag: str) -> str | None:
    with contextlib.closing(engine.client()) as client:
        try:
            return str(client.images.get(tag).id)
        except docker.errors.ImageNotFound:
            return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.agent_image", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--engines", type=int, default=3, help="engines 1..N of the fleet root to supply")
    args = parser.parse_args(argv)
    try:
        ensure_agent_images(ensure_engines(args.engines))
    except FleetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(" ".join(AGENT_IMAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
