"""dockersim: a Docker Engine API simulator. A measuring instrument, for benchmarks only.

Tests of behaviour run on real Docker engines (testbed/fleet.py); this exists so that the benchmarks
can put the controller in front of hundreds or thousands of engines, which one machine cannot run.
tests/integration/test_dockersim_contract.py runs the product's own Docker operations against a real
engine and against this simulator and compares every field the product reads, so that the simulator
cannot drift from Docker unnoticed.

One asyncio process serves many virtual engines, each on its own unix socket (``<dir>/hostNNNNN.sock``,
N from 00000), speaking plain HTTP/1.1 with keep-alive, chunked streams for ``/events`` and image
pulls, and the API version prefix (``/v1.41/...``) accepted or not. What it implements is what the
product calls (docker-py underneath), as Docker 20.10 (API 1.41) answers it:

- ``GET /_ping``, ``/version``, ``/info``;
- containers: list (``all``; filters ``label``, ``name`` (regex), ``status``, ``id``), create (the
  config and host config kept as sent and returned by inspect; image labels and environment merged in
  as Docker does; a ``bind`` mount whose source is missing on this machine is Docker's 400), inspect
  (by id, name or unique id prefix), start, stop, kill, restart, pause, unpause, rename, update
  (restart policy), remove (``force``), logs (empty), and archives: ``PUT`` keeps the files of a tar
  per container, ``GET`` returns those under a path, with the files of bind mounts read from this
  machine;
- images: inspect, list, pull (``POST /images/create``) of a known image (instant) or Docker's 404
  for an unknown one;
- ``GET /events`` with ``since``, ``until`` and filters ``type``, ``event``, ``label``, ``container``,
  ``image``: the last 256 events of the engine replayed from ``since`` (Docker keeps 256 too), then
  live events until ``until``; container events create, start, kill, die, stop, destroy, rename,
  update, pause, unpause, restart, extract-to-dir (an archive put) and archive-path (one read), with
  Docker's Actor attributes (the labels, ``image``, ``name``,
  and ``exitCode``, ``signal``, ``oldName`` where Docker adds them).

States move as Docker's do (created -> running -> exited; ExitCode 0 after a stop, 128+signal after a
kill; StartedAt/FinishedAt in RFC 3339 with nanoseconds). Like ``docker kill`` and ``docker stop``, no
API call makes the restart policy act; the simulated processes never die by themselves.

Not simulated: networks, volumes as objects, exec, attach, build, image layers and the files of an
image (an archive ``GET`` of a path no file was put under answers an empty folder for the usual
folders, 404 otherwise), resource limits, health checks, the time a real engine takes (see
``--latency``), and engines going down (stop the process for all of them at once).

Control: ``<dir>/control.sock`` serves HTTP too (``curl --unix-socket D/control.sock
http://sim/counters``):

- ``GET /counters[?reset=1]``: requests per engine and per route (``GET /containers/json``, the
  routes as ``reconciler.engines.api_route`` names them), their total, and by route;
- ``POST /counters/reset``;
- ``GET /state``: containers (in all, running, running by image), open connections and event
  streams, and this process's resident memory, threads and descriptors;
- ``POST /images``: a JSON list of image inspect documents (``{"RepoTags": [...], "Id": ...,
  "Config": {...}}``, e.g. copied from a real engine) made present on every engine;
- ``POST /latency?seconds=S``.

SIGUSR1 writes the counters to ``<dir>/counters.json``. SIGTERM/SIGINT stop it (sockets removed).

    python -m bench.dockersim --hosts N --dir D [--latency 2ms] [--images IMG ...] [--pullable IMG ...]

prints one JSON line when every socket listens: ``{"ready": true, "hosts": N, "dir": D, "control":
..., "pid": ..., "rss_mb": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import re
import resource
import secrets
import signal
import socket
import sys
import tarfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

API_VERSION = "1.41"
SERVER_VERSION = "20.10.24-dockersim"
EVENTS_KEPT = 256  # Docker's in-memory event log keeps this many
ZERO_TIME = "0001-01-01T00:00:00Z"
DEFAULT_IMAGES = ("hashicorp/consul:1.20", "gliderlabs/registrator:latest")
DEFAULT_PULLABLE = ("hashicorp/consul:1.21", "hashicorp/consul:1.19")
# Folders an archive GET answers as empty when no file was put under them (a real image has them)
KNOWN_FOLDERS = frozenset({"/", "/consul", "/consul/config", "/consul/data", "/etc", "/tmp"})
NAME_PATTERN = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
SIGNALS = {"SIGKILL": 9, "KILL": 9, "SIGTERM": 15, "TERM": 15, "SIGINT": 2, "INT": 2, "SIGHUP": 1, "HUP": 1}
ENDING_SIGNALS = {9, 15, 2}  # the simulated process exits on these (a trap on TERM/INT exits 0)
REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
    404: "Not Found", 409: "Conflict", 500: "Internal Server Error",
}  # fmt: skip


class ApiError(Exception):
    """An answer of Docker's error form: ``{"message": ...}`` with the status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------------------------------
# Times and names


def rfc3339(ns: int) -> str:
    """Go's RFC3339Nano in UTC: trailing zeros of the fraction dropped, none when it is zero."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


def parse_timestamp(value: str) -> float:
    """Docker's ``since``/``until``: seconds with an optional fraction (``1764226800.123456789``)."""
    whole, _, fraction = value.partition(".")
    return int(whole) + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def normalise_image(ref: str) -> str:
    """``busybox`` -> ``busybox:latest``; a tag or digest is kept."""
    if "@" in ref or ":" in ref.rsplit("/", 1)[-1]:
        return ref
    return ref + ":latest"


def parse_duration(text: str) -> float:
    """``2ms``, ``0.5s``, ``2`` (seconds)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|us)?\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (2ms, 0.5s, 2)")
    scale = {"ms": 1e-3, "us": 1e-6, "s": 1.0, None: 1.0}[match.group(2)]
    return float(match.group(1)) * scale


# --------------------------------------------------------------------------------------------------
# The model: images, containers, events


@dataclass
class Image:
    tags: list[str]
    id: str
    config: dict[str, Any]
    created: str

    @classmethod
    def named(cls, name: str) -> Image:
        """An image known by name only: a plausible config (Consul's entrypoint for Consul images)."""
        tag = normalise_image(name)
        consul = "consul" in tag.rsplit("/", 1)[-1].split(":")[0]
        config: dict[str, Any] = {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": ["docker-entrypoint.sh"] if consul else ["/bin/registrator"],
            "Cmd": ["agent", "-dev", "-client", "0.0.0.0"] if consul else None,
            "Labels": {},
        }
        digest = "sha256:" + hashlib.sha256(tag.encode()).hexdigest()
        return cls([tag], digest, config, "2026-01-01T00:00:00Z")

    @classmethod
    def from_inspect(cls, doc: Mapping[str, Any]) -> Image:
        """From ``docker image inspect`` of a real engine: its tags, id and config as they are."""
        tags = [str(t) for t in doc.get("RepoTags") or []]
        if not tags:
            raise ValueError("an image document needs RepoTags")
        config = dict(doc.get("Config") or {})
        return cls(tags, str(doc.get("Id") or Image.named(tags[0]).id), config, str(doc.get("Created") or ""))

    def inspect(self) -> dict[str, Any]:
        return {
            "Id": self.id, "RepoTags": self.tags, "RepoDigests": [], "Parent": "", "Comment": "",
            "Created": self.created, "Container": "", "ContainerConfig": {}, "DockerVersion": "",
            "Author": "", "Config": self.config, "Architecture": "amd64", "Os": "linux", "Size": 2_000_000,
            "VirtualSize": 2_000_000, "GraphDriver": {"Data": None, "Name": "overlay2"},
            "RootFS": {"Type": "layers", "Layers": []}, "Metadata": {"LastTagTime": ZERO_TIME},
        }  # fmt: skip


@dataclass
class Container:
    id: str
    name: str  # with Docker's leading slash
    image_ref: str  # as given to create
    image: Image
    config: dict[str, Any]
    host_config: dict[str, Any]
    created_ns: int
    status: str = "created"
    pid: int = 0
    exit_code: int = 0
    started_at: str = ZERO_TIME
    finished_at: str = ZERO_TIME
    restart_count: int = 0
    files: dict[str, bytes] = field(default_factory=dict)  # path in the container -> content

    @property
    def running(self) -> bool:
        return self.status in ("running", "paused")

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.config.get("Labels") or {})

    def path_args(self) -> tuple[str, list[str]]:
        words = list(self.config.get("Entrypoint") or []) + list(self.config.get("Cmd") or [])
        return (words[0], words[1:]) if words else ("", [])

    def command(self) -> str:
        """The list's ``Command``: Path and Args, an argument holding a space in single quotes."""
        path, args = self.path_args()
        if not args:
            return path
        return path + " " + " ".join(f"'{a}'" if " " in a else a for a in args)

    def mounts(self) -> list[dict[str, Any]]:
        """Inspect's ``Mounts``: the binds (``-v``) and bind mounts, by destination."""
        found: list[dict[str, Any]] = []
        for bind in self.host_config.get("Binds") or []:
            source, _, rest = str(bind).partition(":")
            target, _, mode = rest.partition(":")
            found.append({
                "Type": "bind", "Source": source, "Destination": target, "Mode": mode,
                "RW": "ro" not in mode.split(","), "Propagation": "rprivate",
            })  # fmt: skip
        for mount in self.host_config.get("Mounts") or []:
            found.append({
                "Type": mount.get("Type", "bind"), "Source": mount.get("Source", ""),
                "Destination": mount.get("Target", ""), "Mode": "", "RW": not mount.get("ReadOnly", False),
                "Propagation": "rprivate",
            })  # fmt: skip
        return sorted(found, key=lambda m: str(m["Destination"]))

    def state(self) -> dict[str, Any]:
        return {
            "Status": self.status, "Running": self.running, "Paused": self.status == "paused",
            "Restarting": False, "OOMKilled": False, "Dead": False, "Pid": self.pid,
            "ExitCode": self.exit_code, "Error": "", "StartedAt": self.started_at,
            "FinishedAt": self.finished_at,
        }  # fmt: skip

    def inspect(self) -> dict[str, Any]:
        path, args = self.path_args()
        return {
            "Id": self.id, "Created": rfc3339(self.created_ns), "Path": path, "Args": args,
            "State": self.state(), "Image": self.image.id, "ResolvConfPath": "", "HostnamePath": "",
            "HostsPath": "", "LogPath": "", "Name": self.name, "RestartCount": self.restart_count,
            "Driver": "overlay2", "Platform": "linux", "MountLabel": "", "ProcessLabel": "",
            "AppArmorProfile": "", "ExecIDs": None, "HostConfig": self.host_config,
            "GraphDriver": {"Data": None, "Name": "overlay2"}, "Mounts": self.mounts(),
            "Config": self.config, "NetworkSettings": self._network(),
        }  # fmt: skip

    def _network(self) -> dict[str, Any]:
        mode = str(self.host_config.get("NetworkMode") or "default")
        return {"Bridge": "", "SandboxID": "", "Ports": {}, "Networks": {mode: {"NetworkID": ""}}}

    def summary(self, now_ns: int) -> dict[str, Any]:
        """One entry of ``GET /containers/json``."""
        return {
            "Id": self.id, "Names": [self.name], "Image": self.image_ref, "ImageID": self.image.id,
            "Command": self.command(), "Created": self.created_ns // 1_000_000_000, "Ports": [],
            "Labels": self.labels, "State": self.status, "Status": self._status_text(now_ns),
            "HostConfig": {"NetworkMode": str(self.host_config.get("NetworkMode") or "default")},
            "NetworkSettings": {"Networks": {}},
            "Mounts": [{k: m[k] for k in ("Type", "Source", "Destination", "Mode", "RW", "Propagation")}
                       for m in self.mounts()],
        }  # fmt: skip

    def _status_text(self, now_ns: int) -> str:
        if self.status == "created":
            return "Created"
        if self.running:
            return "Up" + (" (Paused)" if self.status == "paused" else "")
        return f"Exited ({self.exit_code})"


@dataclass
class Event:
    time_ns: int
    type: str
    action: str
    actor_id: str
    attributes: dict[str, str]

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.type == "container":  # the legacy fields Docker still sends for containers
            doc = {"status": self.action, "id": self.actor_id, "from": self.attributes.get("image", "")}
        doc |= {
            "Type": self.type,
            "Action": self.action,
            "Actor": {"ID": self.actor_id, "Attributes": self.attributes},
            "scope": "local",
            "time": self.time_ns // 1_000_000_000,
            "timeNano": self.time_ns,
        }
        return doc


@dataclass(frozen=True)
class EventFilter:
    types: frozenset[str]
    actions: frozenset[str]
    labels: tuple[str, ...]
    containers: frozenset[str]
    images: frozenset[str]

    @classmethod
    def parse(cls, filters: Mapping[str, list[str]]) -> EventFilter:
        return cls(
            frozenset(filters.get("type", ())),
            frozenset(filters.get("event", ())),
            tuple(filters.get("label", ())),
            frozenset(filters.get("container", ())),
            frozenset(filters.get("image", ())),
        )

    def matches(self, event: Event) -> bool:
        attrs = event.attributes
        if self.types and event.type not in self.types:
            return False
        if self.actions and event.action not in self.actions:
            return False
        if self.labels and not all(_label_matches(attrs, wanted) for wanted in self.labels):
            return False
        if self.containers and not (
            event.actor_id in self.containers
            or attrs.get("name") in self.containers
            or any(event.actor_id.startswith(c) for c in self.containers)
        ):
            return False
        return not self.images or attrs.get("image") in self.images


def _label_matches(labels: Mapping[str, str], wanted: str) -> bool:
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


def parse_filters(text: str | None) -> dict[str, list[str]]:
    """Docker's ``filters`` parameter: ``{"label": ["a=b"]}``, or the older ``{"label": {"a=b": true}}``."""
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        raise ApiError(400, f"invalid filter: {text}") from None
    found: dict[str, list[str]] = {}
    for key, values in (raw or {}).items():
        found[key] = [str(v) for v, on in values.items() if on] if isinstance(values, dict) else list(values)
    return found


class Subscriber:
    """An open ``/events`` stream: the events its filter lets through, in a queue."""

    def __init__(self, wanted: EventFilter) -> None:
        self.wanted = wanted
        self.queue: asyncio.Queue[Event] = asyncio.Queue()


# --------------------------------------------------------------------------------------------------
# One engine


class Engine:
    """One virtual Docker engine: its containers, images, events and request counters."""

    def __init__(self, name: str, images: dict[str, Image], pullable: Mapping[str, Image]) -> None:
        self.name = name
        self.images = images  # tag -> image present here (shared until this engine pulls)
        self._images_shared = True
        self.pullable = pullable  # the "registry": tag -> image
        self.containers: dict[str, Container] = {}
        self.names: dict[str, str] = {}  # "/name" -> id
        self.events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self.subscribers: set[Subscriber] = set()
        self.counts: dict[str, int] = {}
        self.connections = 0
        self._pids = 1000

    # --- lookups ------------------------------------------------------------------------------------

    def container(self, ref: str) -> Container:
        """By full id, name (with or without the slash), or unique id prefix, as Docker looks it up."""
        found = self.containers.get(ref)
        if found is not None:
            return found
        by_name = self.names.get(ref if ref.startswith("/") else "/" + ref)
        if by_name is not None:
            return self.containers[by_name]
        matches = [c for cid, c in self.containers.items() if ref and cid.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ApiError(400, f"Multiple IDs found with provided prefix: {ref}")
        raise ApiError(404, f"No such container: {ref}")

    def image(self, ref: str) -> Image | None:
        tagged = normalise_image(ref)
        found = self.images.get(tagged)
        if found is not None:
            return found
        wanted = ref.removeprefix("sha256:")
        for image in self.images.values():
            if len(wanted) >= 12 and image.id.removeprefix("sha256:").startswith(wanted):
                return image
        return None

    def add_image(self, image: Image) -> None:
        if self._images_shared:  # copy on write: engines share the starting set
            self.images = dict(self.images)
            self._images_shared = False
        for tag in image.tags:
            self.images[tag] = image

    # --- events -------------------------------------------------------------------------------------

    def emit(self, container: Container, action: str, **extra: str) -> None:
        attributes = {**container.labels, "image": container.image_ref, "name": container.name.lstrip("/")}
        attributes |= extra
        event = Event(time.time_ns(), "container", action, container.id, attributes)
        self.events.append(event)
        for subscriber in self.subscribers:
            if subscriber.wanted.matches(event):
                subscriber.queue.put_nowait(event)

    # --- container operations ----------------------------------------------------------------------

    def create(self, name: str | None, body: Mapping[str, Any]) -> Container:
        host_config = dict(body.get("HostConfig") or {})
        for mount in host_config.get("Mounts") or []:  # Docker checks the settings first
            source = str(mount.get("Source") or "")
            if mount.get("Type", "bind") == "bind" and not os.path.exists(source):
                raise ApiError(
                    400, f'invalid mount config for type "bind": bind source path does not exist: {source}'
                )
        ref = str(body.get("Image") or "")
        image = self.image(ref)
        if image is None:
            raise ApiError(404, f"No such image: {normalise_image(ref)}")
        if name is not None and not NAME_PATTERN.match(name):
            raise ApiError(
                400, f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )
        cid = secrets.token_hex(32)
        full = "/" + (name or f"sim_{cid[:12]}").lstrip("/")
        self._claim(full, cid, "Conflict.")
        config = _container_config(body, image, cid, host_config)
        host_config.setdefault("NetworkMode", "default")
        policy = host_config.get("RestartPolicy") or {}
        host_config["RestartPolicy"] = {"Name": "", "MaximumRetryCount": 0, **policy}
        container = Container(cid, full, ref, image, config, host_config, time.time_ns())
        self.containers[cid] = container
        self.emit(container, "create")
        return container

    def _claim(self, full_name: str, cid: str, prefix: str) -> None:
        holder = self.names.get(full_name)
        if holder is not None:
            raise ApiError(
                409,
                f'{prefix} The container name "{full_name}" is already in use by container "{holder}". '
                "You have to remove (or rename) that container to be able to reuse that name.",
            )
        self.names[full_name] = cid

    def start(self, ref: str) -> bool:
        container = self.container(ref)
        if container.running:
            return False
        self._pids += 1
        container.status, container.pid, container.exit_code = "running", self._pids, 0
        container.started_at = rfc3339(time.time_ns())
        self.emit(container, "start")
        return True

    def _end(self, container: Container, exit_code: int) -> None:
        container.status, container.pid, container.exit_code = "exited", 0, exit_code
        container.finished_at = rfc3339(time.time_ns())
        self.emit(container, "die", exitCode=str(exit_code))

    def stop(self, ref: str) -> bool:
        container = self.container(ref)
        if not container.running:
            return False
        self.emit(container, "kill", signal="15")
        self._end(container, 0)
        self.emit(container, "stop")
        return True

    def kill(self, ref: str, signal_name: str) -> None:
        container = self.container(ref)
        number = _signal_number(signal_name)
        if not container.running:
            raise ApiError(409, f"Cannot kill container: {ref}: Container {container.id} is not running")
        self.emit(container, "kill", signal=str(number))
        if number in ENDING_SIGNALS:
            self._end(container, 128 + number if number == 9 else 0)

    def restart(self, ref: str) -> None:
        self.stop(ref)
        self.start(ref)
        self.emit(self.container(ref), "restart")

    def pause(self, ref: str, paused: bool) -> None:
        container = self.container(ref)
        if not container.running:
            raise ApiError(409, f"Container {container.id} is not running")
        if (container.status == "paused") == paused:
            state = "already paused" if paused else "not paused"
            raise ApiError(409, f"Container {container.id} is {state}")
        container.status = "paused" if paused else "running"
        self.emit(container, "pause" if paused else "unpause")

    def rename(self, ref: str, new_name: str) -> None:
        container = self.container(ref)
        if not new_name or not NAME_PATTERN.match(new_name):
            raise ApiError(
                400, f"Invalid container name ({new_name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )
        full = "/" + new_name.lstrip("/")
        if full == container.name:
            raise ApiError(400, "Renaming a container with the same name as its current name")
        self._claim(full, container.id, "Error when allocating new name: Conflict.")
        old = container.name
        del self.names[old]
        container.name = full
        self.emit(container, "rename", oldName=old)

    def update(self, ref: str, body: Mapping[str, Any]) -> None:
        container = self.container(ref)
        if "RestartPolicy" in body:
            container.host_config["RestartPolicy"] = {
                "Name": "",
                "MaximumRetryCount": 0,
                **body["RestartPolicy"],
            }
        self.emit(container, "update")

    def remove(self, ref: str, force: bool) -> None:
        container = self.container(ref)
        if container.running and not force:
            raise ApiError(
                409,
                f"You cannot remove a running container {container.id}. Stop the container before "
                "attempting removal or force remove",
            )
        if container.running:
            self.emit(container, "kill", signal="9")
            self._end(container, 137)
        del self.containers[container.id]
        del self.names[container.name]
        self.emit(container, "destroy")

    def listed(self, everything: bool, filters: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        now = time.time_ns()
        found = [c for c in self.containers.values() if _listed(c, everything, filters)]
        found.sort(key=lambda c: c.created_ns, reverse=True)
        return [c.summary(now) for c in found]

    # --- archives -----------------------------------------------------------------------------------

    def put_archive(self, ref: str, path: str, data: bytes) -> None:
        container = self.container(ref)
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        content = tar.extractfile(member)
                        target = os.path.normpath(os.path.join(path, member.name))
                        container.files[target] = content.read() if content else b""
        except tarfile.TarError as exc:
            raise ApiError(400, f"not a tar archive: {exc}") from None
        self.emit(container, "extract-to-dir")

    def get_archive(self, ref: str, path: str) -> tuple[bytes, dict[str, Any]]:
        container = self.container(ref)
        path = os.path.normpath(path) if path != "/" else "/"
        files = dict(container.files)
        for mount in container.mounts():  # bind mounts: the file on this machine, as it is now
            source = Path(str(mount["Source"]))
            if source.is_file():
                with contextlib.suppress(OSError):
                    files[str(mount["Destination"])] = source.read_bytes()
        base = os.path.basename(path) or "/"
        self.emit(container, "archive-path")
        if path in files:
            return _tar({base: files[path]}), _stat(base, len(files[path]), 0o644)
        prefix = path.rstrip("/") + "/"
        inside = {p: d for p, d in files.items() if p.startswith(prefix)}
        if not inside and path not in KNOWN_FOLDERS:
            raise ApiError(404, f"Could not find the file {path} in container {ref}")
        entries = {f"{base}/{p[len(prefix) :]}" if base != "/" else p[1:]: d for p, d in inside.items()}
        return _tar(entries, folder=base if base != "/" else None), _stat(base, 4096, 0o755 | 0x80000000)


def _signal_number(name: str) -> int:
    if name.isdigit():
        return int(name)
    number = SIGNALS.get(name.upper())
    if number is None:
        raise ApiError(400, f"Invalid signal: {name}")
    return number


def _container_config(
    body: Mapping[str, Any], image: Image, cid: str, host_config: Mapping[str, Any]
) -> dict[str, Any]:
    """Inspect's ``Config``: the request's, with the image's labels, environment, entrypoint and
    command merged in as Docker merges them."""
    config = {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")}
    image_config = image.config
    config["Labels"] = {**(image_config.get("Labels") or {}), **(body.get("Labels") or {})}
    config["Env"] = _merged_env(image_config.get("Env") or [], body.get("Env") or [])
    if not body.get("Entrypoint"):
        config["Entrypoint"] = image_config.get("Entrypoint")
        if not body.get("Cmd"):
            config["Cmd"] = image_config.get("Cmd")
    mode = str(host_config.get("NetworkMode") or "default")
    if not config.get("Hostname"):
        config["Hostname"] = socket.gethostname() if mode == "host" else cid[:12]
    for key, default in (
        ("Domainname", ""),
        ("User", ""),
        ("WorkingDir", image_config.get("WorkingDir", "")),
    ):
        config.setdefault(key, default)
    return config


def _merged_env(image_env: Iterable[str], env: Iterable[str]) -> list[str]:
    """The container's variables, then the image's whose names it does not set (Docker's merge)."""
    merged = list(env)
    names = {entry.split("=", 1)[0] for entry in merged}
    return merged + [entry for entry in image_env if entry.split("=", 1)[0] not in names]


def _listed(container: Container, everything: bool, filters: Mapping[str, list[str]]) -> bool:
    if not everything and not container.running:
        return False
    labels = container.labels
    if not all(_label_matches(labels, wanted) for wanted in filters.get("label", ())):
        return False
    names = filters.get("name")
    bare = container.name.lstrip("/")
    if names and not any(re.search(p, container.name) or re.search(p, bare) for p in names):
        return False
    statuses = filters.get("status")
    if statuses and container.status not in statuses:
        return False
    ids = filters.get("id")
    return not ids or any(container.id.startswith(i) for i in ids)


def _tar(entries: Mapping[str, bytes], folder: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        if folder is not None:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in sorted(entries.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _stat(name: str, size: int, mode: int) -> dict[str, Any]:
    return {"name": name, "size": size, "mode": mode, "mtime": rfc3339(time.time_ns()), "linkTarget": ""}


# --------------------------------------------------------------------------------------------------
# HTTP


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() in ("1", "true", "yes")

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise ApiError(400, "invalid JSON body") from None


class Conn:
    """One client connection: reading requests, writing responses (whole or chunked)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self) -> Request | None:
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        body = await self._body(headers)
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        return Request(method, unquote(parts.path), query, headers, body)

    async def _body(self, headers: Mapping[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunks.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    return b"".join(c[:-2] for c in chunks)
        length = int(headers.get("content-length") or 0)
        return await self.reader.readexactly(length) if length else b""

    def head(self, status: int, headers: Mapping[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
        lines += [
            f"Api-Version: {API_VERSION}", "Docker-Experimental: false", "Ostype: linux",
            f"Server: Docker/{SERVER_VERSION} (linux)",
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}",
        ]  # fmt: skip
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(self, status: int, body: bytes = b"", content_type: str = "application/json",
                   extra: Mapping[str, str] | None = None) -> None:  # fmt: skip
        headers = dict(extra or {})
        if status not in (204, 304):
            headers |= {"Content-Type": content_type, "Content-Length": str(len(body))}
        self.writer.write(self.head(status, headers) + (body if status not in (204, 304) else b""))
        await self.writer.drain()

    async def send_json(self, status: int, value: Any) -> None:
        await self.send(status, json.dumps(value, separators=(",", ":")).encode() + b"\n")

    async def start_chunks(self, content_type: str = "application/json") -> None:
        self.writer.write(self.head(200, {"Content-Type": content_type, "Transfer-Encoding": "chunked"}))
        await self.writer.drain()

    async def chunk(self, data: bytes) -> None:
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n")
        await self.writer.drain()


Handler = Callable[[Engine, Request, Conn, list[str]], Awaitable[None]]


def route_name(method: str, parts: list[str]) -> str:
    """``METHOD /route`` as reconciler.engines.api_route names it (ids and image names generalised)."""
    shown = list(parts)
    if len(shown) > 2 and shown[0] == "images":
        shown = ["images", "{name}", shown[-1]]
    elif len(shown) > 1 and shown[0] == "containers" and shown[1] not in ("json", "create", "prune"):
        shown[1] = "{id}"
    return f"{method} /" + "/".join(shown)


def split_path(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p != ""]
    if parts and re.fullmatch(r"v1\.\d+", parts[0]):
        parts = parts[1:]
    return parts


class Simulator:
    """Every virtual engine, the control socket and the counters."""

    def __init__(self, directory: Path, hosts: int, latency: float, images: list[Image],
                 pullable: list[Image], first: int = 0) -> None:  # fmt: skip
        self.directory = directory
        self.latency = latency
        self.catalogue = {tag: image for image in [*images, *pullable] for tag in image.tags}
        present = {tag: image for image in images for tag in image.tags}
        self.engines = {
            f"host{i:05d}": Engine(f"host{i:05d}", present, self.catalogue)
            for i in range(first, first + hosts)
        }
        self.servers: list[asyncio.AbstractServer] = []

    # --- serving ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, engine in self.engines.items():
            self.servers.append(await self._listen(self.directory / f"{name}.sock", engine))
        self.servers.append(await self._listen(self.directory / "control.sock", None))

    async def _listen(self, path: Path, engine: Engine | None) -> asyncio.AbstractServer:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(engine, Conn(reader, writer))

        return await asyncio.start_unix_server(serve, path=str(path), backlog=256)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for path in self.directory.glob("*.sock"):
            with contextlib.suppress(OSError):
                path.unlink()

    async def _serve(self, engine: Engine | None, conn: Conn) -> None:
        if engine is not None:
            engine.connections += 1
        try:
            while True:
                request = await conn.request()
                if request is None:
                    return
                if engine is None:
                    await self._control(request, conn)
                else:
                    await self._engine_request(engine, request, conn)
                if request.headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if engine is not None:
                engine.connections -= 1
            conn.writer.close()

    async def _engine_request(self, engine: Engine, request: Request, conn: Conn) -> None:
        parts = split_path(request.path)
        name = route_name(request.method, parts)
        engine.counts[name] = engine.counts.get(name, 0) + 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        handler = _find_handler(request.method, parts)
        try:
            if handler is None:
                raise ApiError(404, "page not found")
            await handler(engine, request, conn, parts)
        except ApiError as exc:
            await conn.send_json(exc.status, {"message": exc.message})

    # --- control ------------------------------------------------------------------------------------

    async def _control(self, request: Request, conn: Conn) -> None:
        parts = split_path(request.path)
        if request.method == "GET" and parts == ["counters"]:
            await conn.send_json(200, self.counters())
            if request.flag("reset"):
                self.reset_counters()
        elif request.method == "POST" and parts == ["counters", "reset"]:
            self.reset_counters()
            await conn.send(204)
        elif request.method == "GET" and parts == ["state"]:
            await conn.send_json(200, self.state())
        elif request.method == "POST" and parts == ["images"]:
            added = [Image.from_inspect(doc) for doc in request.json()]
            self.add_images(added)
            await conn.send_json(200, {"added": [t for i in added for t in i.tags]})
        elif request.method == "POST" and parts == ["latency"]:
            self.latency = float(request.query.get("seconds", "0"))
            await conn.send(204)
        else:
            await conn.send_json(404, {"message": "control: GET /counters, GET /state, POST /images, ..."})

    def add_images(self, images: list[Image]) -> None:
        for image in images:
            for tag in image.tags:
                self.catalogue[tag] = image
            for engine in self.engines.values():
                engine.add_image(image)

    def counters(self) -> dict[str, Any]:
        by_route: dict[str, int] = {}
        for engine in self.engines.values():
            for route, count in engine.counts.items():
                by_route[route] = by_route.get(route, 0) + count
        return {
            "engines": {name: dict(e.counts) for name, e in self.engines.items() if e.counts},
            "by_route": by_route,
            "total": sum(by_route.values()),
        }

    def reset_counters(self) -> None:
        for engine in self.engines.values():
            engine.counts = {}

    def state(self) -> dict[str, Any]:
        running_by_image: dict[str, int] = {}
        total = running = 0
        for engine in self.engines.values():
            total += len(engine.containers)
            for container in engine.containers.values():
                if container.running:
                    running += 1
                    running_by_image[container.image_ref] = running_by_image.get(container.image_ref, 0) + 1
        return {
            "hosts": len(self.engines),
            "containers": total,
            "running": running,
            "running_by_image": running_by_image,
            "connections": sum(e.connections for e in self.engines.values()),
            "event_streams": sum(len(e.subscribers) for e in self.engines.values()),
            "process": process_figures(os.getpid()),
        }


def process_figures(pid: int) -> dict[str, float]:
    """Resident memory (MB), threads and open descriptors of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    values = {line.split(":")[0]: line.split(":", 1)[1].split() for line in status}
    return {
        "rss_mb": int(values["VmRSS"][0]) / 1024,
        "threads": int(values["Threads"][0]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


# --------------------------------------------------------------------------------------------------
# The engine API's handlers


async def _ping(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    await conn.send(
        200, b"OK", "text/plain; charset=utf-8", {"Cache-Control": "no-cache, no-store, must-revalidate"}
    )


async def _version(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    await conn.send_json(200, {
        "Platform": {"Name": "dockersim (a Docker Engine API simulator, for benchmarks only)"},
        "Version": SERVER_VERSION, "ApiVersion": API_VERSION, "MinAPIVersion": "1.12", "Os": "linux",
        "Arch": "amd64", "KernelVersion": os.uname().release, "GitCommit": "", "GoVersion": "",
        "Components": [{"Name": "Engine", "Version": SERVER_VERSION, "Details": {"ApiVersion": API_VERSION}}],
    })  # fmt: skip


async def _info(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    containers = list(engine.containers.values())
    running = sum(c.status == "running" for c in containers)
    paused = sum(c.status == "paused" for c in containers)
    await conn.send_json(200, {
        "ID": engine.name, "Name": engine.name, "Containers": len(containers), "ContainersRunning": running,
        "ContainersPaused": paused, "ContainersStopped": len(containers) - running - paused,
        "Images": len({i.id for i in engine.images.values()}), "Driver": "overlay2",
        "ServerVersion": SERVER_VERSION, "OperatingSystem": "dockersim", "OSType": "linux",
    })  # fmt: skip


async def _list(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    filters = parse_filters(request.query.get("filters"))
    await conn.send_json(200, engine.listed(request.flag("all"), filters))


async def _create(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    container = engine.create(request.query.get("name") or None, request.json())
    await conn.send_json(201, {"Id": container.id, "Warnings": []})


async def _inspect(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    await conn.send_json(200, engine.container(parts[1]).inspect())


async def _start(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    await conn.send(204 if engine.start(parts[1]) else 304)


async def _stop(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    await conn.send(204 if engine.stop(parts[1]) else 304)


async def _kill(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    engine.kill(parts[1], request.query.get("signal") or "SIGKILL")
    await conn.send(204)


async def _restart(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    engine.restart(parts[1])
    await conn.send(204)


async def _pause(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    engine.pause(parts[1], parts[2] == "pause")
    await conn.send(204)


async def _rename(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    engine.rename(parts[1], request.query.get("name", ""))
    await conn.send(204)


async def _update(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    engine.update(parts[1], request.json())
    await conn.send_json(200, {"Warnings": None})


async def _remove(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    engine.remove(parts[1], request.flag("force"))
    await conn.send(204)


async def _logs(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    engine.container(parts[1])
    await conn.send(200, b"", "application/vnd.docker.raw-stream")


async def _put_archive(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    engine.put_archive(parts[1], request.query.get("path", "/"), request.body)
    await conn.send(200, b"", "text/plain")


async def _get_archive(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    data, stat = engine.get_archive(parts[1], request.query.get("path", "/"))
    header = base64.b64encode(json.dumps(stat).encode()).decode()
    body = data if request.method == "GET" else b""
    await conn.send(200, body, "application/x-tar", {"X-Docker-Container-Path-Stat": header})


async def _image_inspect(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    ref = "/".join(parts[1:-1])
    image = engine.image(ref)
    if image is None:  # Docker 20.10 says it twice here
        missing = normalise_image(ref)
        raise ApiError(404, f"no such image: {missing}: No such image: {missing}")
    await conn.send_json(200, image.inspect())


async def _image_list(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    unique = {image.id: image for image in engine.images.values()}
    await conn.send_json(200, [
        {"Id": i.id, "RepoTags": i.tags, "RepoDigests": [], "Created": 0, "Size": 2_000_000,
         "Labels": i.config.get("Labels") or {}, "Containers": -1, "ParentId": "", "SharedSize": -1}
        for i in unique.values()
    ])  # fmt: skip


async def _pull(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    repository = request.query.get("fromImage", "")
    tag = request.query.get("tag", "")
    ref = f"{repository}@{tag}" if tag.startswith("sha256:") else f"{repository}:{tag or 'latest'}"
    if ":" in repository.rsplit("/", 1)[-1] or "@" in repository:
        ref = repository
    image = engine.pullable.get(normalise_image(ref))
    if image is None:
        raise ApiError(
            404,
            f"pull access denied for {repository}, repository does not exist or may require "
            "'docker login': denied: requested access to the resource is denied",
        )
    engine.add_image(image)
    await conn.start_chunks()
    for line in (
        {"status": f"Pulling from {repository}", "id": tag or "latest"},
        {"status": f"Digest: {image.id}"},
        {"status": f"Status: Downloaded newer image for {normalise_image(ref)}"},
    ):
        await conn.chunk(json.dumps(line).encode() + b"\r\n")
    await conn.chunk(b"")


async def _events(engine: Engine, request: Request, conn: Conn, parts: list[str]) -> None:
    now = time.time()
    since = parse_timestamp(request.query["since"]) if request.query.get("since") else None
    until = parse_timestamp(request.query["until"]) if request.query.get("until") else None
    wanted = EventFilter.parse(parse_filters(request.query.get("filters")))
    subscriber = Subscriber(wanted)
    engine.subscribers.add(subscriber)  # before the replay: nothing falls between the two
    try:
        await conn.start_chunks()
        replayed = [
            e for e in engine.events
            if since is not None and e.time_ns / 1e9 >= since and (until is None or e.time_ns / 1e9 <= until)
            and wanted.matches(e)
        ]  # fmt: skip
        last = replayed[-1].time_ns if replayed else 0
        for event in replayed:
            await conn.chunk(json.dumps(event.document()).encode() + b"\n")
        if until is None or until > now:
            await _live_events(conn, subscriber, until, last)
        await conn.chunk(b"")
    finally:
        engine.subscribers.discard(subscriber)


async def _live_events(conn: Conn, subscriber: Subscriber, until: float | None, replayed_to: int) -> None:
    """Events as they come until ``until`` (or for ever); a client that goes away ends the stream."""
    gone = asyncio.ensure_future(conn.reader.read(1))
    try:
        while True:
            timeout = None if until is None else until - time.time()
            if timeout is not None and timeout <= 0:
                return
            getting = asyncio.ensure_future(subscriber.queue.get())
            done, _ = await asyncio.wait(
                {getting, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if getting not in done:
                getting.cancel()
                if gone in done:
                    raise ConnectionResetError("the client closed the event stream")
                return
            event = getting.result()
            if event.time_ns > replayed_to and (until is None or event.time_ns / 1e9 <= until):
                await conn.chunk(json.dumps(event.document()).encode() + b"\n")
    finally:
        if not gone.done():  # the reader is free again only once the cancelled read has ended
            gone.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await gone  # a connection reset by the client is its way of leaving


def _find_handler(method: str, parts: list[str]) -> Handler | None:
    if not parts:
        return None
    head, size = parts[0], len(parts)
    if head == "_ping" and size == 1:
        return _ping
    if size == 1 and method == "GET":
        return {"version": _version, "info": _info, "events": _events}.get(head)
    if head == "containers":
        return _container_handler(method, parts)
    if head == "images":
        if size == 2 and parts[1] == "json" and method == "GET":
            return _image_list
        if size == 2 and parts[1] == "create" and method == "POST":
            return _pull
        if size >= 3 and parts[-1] == "json" and method == "GET":
            return _image_inspect
    return None


_CONTAINER_ACTIONS: dict[tuple[str, str], Handler] = {
    ("GET", "json"): _inspect, ("POST", "start"): _start, ("POST", "stop"): _stop,
    ("POST", "kill"): _kill, ("POST", "restart"): _restart, ("POST", "pause"): _pause,
    ("POST", "unpause"): _pause, ("POST", "rename"): _rename, ("POST", "update"): _update,
    ("GET", "logs"): _logs, ("PUT", "archive"): _put_archive, ("GET", "archive"): _get_archive,
    ("HEAD", "archive"): _get_archive,
}  # fmt: skip


def _container_handler(method: str, parts: list[str]) -> Handler | None:
    if len(parts) == 2 and parts[1] == "json" and method == "GET":
        return _list
    if len(parts) == 2 and parts[1] == "create" and method == "POST":
        return _create
    if len(parts) == 2 and method == "DELETE":
        return _remove
    if len(parts) == 3:
        return _CONTAINER_ACTIONS.get((method, parts[2]))
    return None


# --------------------------------------------------------------------------------------------------
# Command line


def raise_fd_limit() -> int:
    """The soft descriptor limit raised to the hard one: each engine is a listening socket, each client
    connection one more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def load_images(names: Iterable[str], files: Iterable[Path]) -> list[Image]:
    images = [Image.named(n) for n in names]
    for path in files:
        images += [Image.from_inspect(doc) for doc in json.loads(path.read_text())]
    return images


async def run(args: argparse.Namespace) -> None:
    limit = raise_fd_limit()
    if args.hosts + 64 > limit:
        raise SystemExit(f"dockersim: {args.hosts} engines need more than the descriptor limit {limit}")
    images = load_images(args.images, args.image_file)
    simulator = Simulator(args.dir, args.hosts, args.latency, images, load_images(args.pullable, []))
    await simulator.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: _dump(simulator))
    ready = {
        "ready": True, "hosts": args.hosts, "dir": str(args.dir), "control": str(args.dir / "control.sock"),
        "pid": os.getpid(), "latency_s": args.latency, **process_figures(os.getpid()),
    }  # fmt: skip
    print(json.dumps(ready), flush=True)
    await stopping.wait()
    await simulator.close()


def _dump(simulator: Simulator) -> None:
    path = simulator.directory / "counters.json"
    path.write_text(json.dumps({**simulator.counters(), "state": simulator.state()}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dockersim",
        description="A Docker Engine API simulator serving many virtual engines (for benchmarks only).",
    )
    parser.add_argument("--hosts", type=int, required=True, help="virtual engines: <dir>/host00000.sock ...")
    parser.add_argument("--dir", type=Path, required=True, help="folder of the sockets (created)")
    parser.add_argument("--latency", type=parse_duration, default=0.0, help="added to every call (2ms)")
    parser.add_argument("--images", nargs="*", default=list(DEFAULT_IMAGES), help="present on every engine")
    parser.add_argument("--image-file", type=Path, action="append", default=[],
                        help="JSON list of image inspect documents, present on every engine")  # fmt: skip
    parser.add_argument("--pullable", nargs="*", default=list(DEFAULT_PULLABLE),
                        help="images a pull finds (and the present ones); others: a 404")  # fmt: skip
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
