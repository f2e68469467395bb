"""The operator's config files on each host (``consul.config_files`` with ``host_path``), mounted
read-only into the agent's config folder, and what the controller knows of their content.

Consul reads its config folder once, when it starts. So the question on every pass is: has a file
been edited on the host since its agent read it? When the controller creates an agent it reads each
mounted file through the host's Docker engine (the archive API of the new container, before it
starts), checks it as Consul would (UTF-8; a ``.json`` file a JSON object) and writes their SHA-256
into the container (``RECORD``, in a subfolder, which Consul does not read).

On each pass the files are read again, but not through the running agent: a running container's
file mount holds the file it was started with, so a file replaced on the host (a new file renamed
over it, as editors and configuration tools write) would never show there. A container that is made
but never started resolves its mounts when asked: a view container (reconciler/mounted_docker.py:
the agent's image, the same mounts, never started) is made, read and removed. A file whose hash
differs from the record was edited since, and the agent is replaced through the gates. Contents are
never logged.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from desired_state.render import CONSUL_CONFIG

RECORD = f"{CONSUL_CONFIG}/.consul-reconciler/loaded.json"  # a subfolder: Consul skips it
MAX_ARCHIVE_BYTES = 8 << 20  # a config folder holds a few small files


class MountedConfigError(Exception):
    """A mounted config file that cannot be read or that Consul would refuse; names the file."""


class HostFileMissing(MountedConfigError):
    """A mounted config file is not on the host (Docker refuses to mount a missing file)."""


@dataclass(frozen=True)
class Edit:
    """A mounted file whose content is not what its agent read when it started."""

    path: str  # in the container
    loaded: str | None  # SHA-256 the agent started with (None: no record of it)
    now: str | None  # SHA-256 on the host now (None: gone)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def before(self) -> str:
        if self.loaded is None:
            return f"{self.name} (what its agent read is not recorded)"
        return f"{self.name} {_short(self.loaded)} (as its agent read it)"

    def after(self) -> str:
        if self.now is None:
            return f"{self.name} missing or unreadable on the host"
        return f"{self.name} {_short(self.now)} (on the host now)"


def _short(value: str) -> str:
    return f"sha256:{value[:12]}"


def folder_files(archive: bytes, path: str = CONSUL_CONFIG) -> dict[str, bytes]:
    """The regular files of a tar archive of ``path`` (as Docker sends it: ``config/...`` for a folder,
    ``name`` for a file), by their path in the container."""
    parent = path.rsplit("/", 1)[0]
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                data = tar.extractfile(member)
                found[f"{parent}/{member.name}"] = data.read() if data else b""
    return found


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check(path: str, data: bytes | None) -> bytes:
    """``data``, if Consul would read it as the file at ``path``; else MountedConfigError."""
    name = path.rsplit("/", 1)[-1]
    if data is None:
        raise MountedConfigError(f"{name} is not a regular file on the host (a folder?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MountedConfigError(f"{name} is not UTF-8 text") from None
    if name.endswith(".json"):
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise MountedConfigError(f"{name} is not a JSON object (Consul would not start with it)")
    return data


def loaded_record(paths: Iterable[str], files: Mapping[str, bytes]) -> bytes:
    """The record written into a new agent: each mounted file's SHA-256, after checking each."""
    record: dict[str, str] = {}
    for path in paths:
        record[path] = digest(check(path, files.get(path)))
    return json.dumps(record, sort_keys=True).encode()


def edits(
    mounted: Mapping[str, str], record: Mapping[str, Any], files: Mapping[str, bytes]
) -> tuple[Edit, ...]:
    """The mounted files (container path -> host path) whose content on the host now (``files``) is not
    what the agent read when it was made (``record``)."""
    found: list[Edit] = []
    for path in mounted:
        now = digest(files[path]) if path in files else None
        loaded = record.get(path)
        if now != loaded:
            found.append(Edit(path, loaded if isinstance(loaded, str) else None, now))
    return tuple(found)


def parse_record(files: Mapping[str, bytes]) -> dict[str, Any]:
    try:
        record = json.loads(files.get(RECORD, b"{}"))
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def record_archive(record: bytes) -> bytes:
    """A tar archive holding the record at its place, for put_archive at '/'."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        folder = tarfile.TarInfo(RECORD.lstrip("/").rsplit("/", 1)[0])
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        info = tarfile.TarInfo(RECORD.lstrip("/"))
        info.size = len(record)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(record))
    return buffer.getvalue()
