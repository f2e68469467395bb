"""Raft snapshots taken before server changes: fetched through the leader, verified, kept on the
management host, the oldest pruned.

The archive is Consul's own (snapshot/snapshot.go ``New``, snapshot/archive.go ``write``): a gzip
stream of a tar holding ``meta.json`` (raft's SnapshotMeta: Version, ID, Index, Term, Size, ...),
``state.bin`` (the state store) and ``SHA256SUMS`` (``<hex>  <name>`` lines for the other two).
:func:`verify_archive` reads it as Consul's ``snapshot.Verify`` does before a restore: the gzip stream
to its end, no member but those three, and both sums matching.

Files are named ``<cluster>-<UTC time>-<raft index>.snap`` (``blog-20261127T032532Z-4711.snap``) in one
folder, written under a hidden temporary name, verified from the disk, then renamed into place: a
file with a final name is always a whole, readable snapshot. They hold every KV value and ACL token of
the cluster, so the folder is made 0700 and each file 0600.

Pure: :func:`verify_archive`, the naming, :func:`default_directory`. The shell: :func:`save_archive`,
:func:`prune` (the disk) and :class:`SnapshotTaker` (Consul and the disk).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import tarfile
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from reconciler.consul_api import ConsulAgent, ConsulError, ConsulUnreachable
from reconciler.consul_settings import TLSClient
from reconciler.store.db import default_database_url

log = logging.getLogger("consul_reconciler.snapshots")

SUFFIX = ".snap"
MEMBERS = ("meta.json", "state.bin")  # what SHA256SUMS must cover (snapshot/archive.go read)
SUMS = "SHA256SUMS"
_NAME = re.compile(r"^(?P<cluster>[a-z0-9._-]+)-(?P<when>\d{8}T\d{6}Z)-(?P<index>\d+)\.snap$")
_STAMP = "%Y%m%dT%H%M%SZ"
_CHUNK = 1 << 16
_META_LIMIT = 1 << 20  # meta.json is a few hundred bytes; more is no snapshot of Consul's


class SnapshotError(Exception):
    """No snapshot: the archive is unreadable, or it could not be written or kept; the message says
    which and why."""


# --- reading an archive (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveInfo:
    """What a verified archive's meta.json says, and the size of its state."""

    index: int  # raft index the snapshot was taken at
    term: int
    version: int
    state_bytes: int


class _Summed:
    """Reads a tar member to its end, hashing and counting it."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read_all(self, member: IO[bytes], keep: int = 0) -> bytes:
        kept = bytearray()
        while chunk := member.read(_CHUNK):
            self.sha256.update(chunk)
            self.size += len(chunk)
            if len(kept) < keep:
                kept += chunk[: keep - len(kept)]
        return bytes(kept)


def verify_archive(stream: IO[bytes]) -> ArchiveInfo:
    """Check a snapshot archive as Consul does before a restore; raise SnapshotError naming the first
    problem (not gzip, truncated, a member missing or unexpected, a sum that does not match)."""
    try:
        return _read_archive(stream)
    except SnapshotError:
        raise
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise SnapshotError(f"not a gzip stream, or a corrupt one ({exc})") from None
    except EOFError:
        raise SnapshotError("truncated: the gzip stream ends before its end marker") from None
    except tarfile.TarError as exc:
        raise SnapshotError(f"not a readable tar archive inside the gzip stream ({exc})") from None


def _read_archive(stream: IO[bytes]) -> ArchiveInfo:
    sums: dict[str, _Summed] = {}
    meta_text = b""
    sums_text = b""
    with gzip.GzipFile(fileobj=stream, mode="rb") as unzipped:
        with tarfile.open(fileobj=unzipped, mode="r|") as archive:
            for member in archive:
                if member.name not in (*MEMBERS, SUMS):
                    raise SnapshotError(f"unexpected file {member.name!r} in the archive")
                if member.name in sums or (member.name == SUMS and sums_text):
                    raise SnapshotError(f"{member.name} appears twice in the archive")
                data = archive.extractfile(member)
                if data is None:
                    raise SnapshotError(f"{member.name} in the archive is not a regular file")
                summed = _Summed()
                kept = summed.read_all(data, keep=_META_LIMIT + 1 if member.name != "state.bin" else 0)
                if member.name == SUMS:
                    sums_text = kept or b"\n"
                else:
                    sums[member.name] = summed
                    if member.name == "meta.json":
                        meta_text = kept
        trailing = unzipped.read(_CHUNK)
        while trailing:  # the tar's end blocks are zeros; anything else is no snapshot of Consul's
            if trailing.strip(b"\0"):
                raise SnapshotError("data after the end of the tar archive")
            trailing = unzipped.read(_CHUNK)
    for name in MEMBERS:
        if name not in sums:
            raise SnapshotError(f"the archive has no {name}")
    if not sums_text:
        raise SnapshotError(f"the archive has no {SUMS}")
    _check_sums(sums_text, sums)
    meta = _meta(meta_text)
    size = meta.get("Size")
    state_bytes = sums["state.bin"].size
    if isinstance(size, int) and size != state_bytes:
        raise SnapshotError(f"state.bin holds {state_bytes} bytes but meta.json says {size}")
    return ArchiveInfo(
        index=meta["Index"], term=_int(meta, "Term"), version=_int(meta, "Version"), state_bytes=state_bytes
    )


def _check_sums(text: bytes, sums: Mapping[str, _Summed]) -> None:
    """SHA256SUMS lists each member once with its sum (snapshot/archive.go DecodeAndVerify)."""
    seen: set[str] = set()
    for number, line in enumerate(text.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise SnapshotError(f"{SUMS} line {number} is not '<sha256>  <file>': {line[:80]!r}")
        name = name.strip()
        if name not in sums:
            raise SnapshotError(f"{SUMS} lists {name!r}, which the archive does not hold")
        if digest.lower() != sums[name].sha256.hexdigest():
            raise SnapshotError(f"hash check failed for {name!r}: its SHA-256 is not the one {SUMS} lists")
        seen.add(name)
    missing = [name for name in MEMBERS if name not in seen]
    if missing:
        raise SnapshotError(f"{SUMS} lists no hash for {', '.join(repr(m) for m in missing)}")


def _meta(text: bytes) -> dict[str, Any]:
    if len(text) > _META_LIMIT:
        raise SnapshotError("meta.json is larger than any snapshot's metadata")
    try:
        meta = json.loads(text)
    except ValueError:
        raise SnapshotError("meta.json is not JSON") from None
    if not isinstance(meta, dict):
        raise SnapshotError("meta.json is not a JSON object")
    index = meta.get("Index")
    if not isinstance(index, int) or isinstance(index, bool) or index <= 0:
        raise SnapshotError("meta.json names no raft Index")
    return meta


def _int(meta: Mapping[str, Any], key: str) -> int:
    value = meta.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def verify_file(path: Path) -> ArchiveInfo:
    """:func:`verify_archive` of a file; an empty file is named as such."""
    try:
        with path.open("rb") as stream:
            if os.fstat(stream.fileno()).st_size == 0:
                raise SnapshotError("empty (0 bytes)")
            return verify_archive(stream)
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc.strerror or exc}") from None


# --- names and places (pure) ------------------------------------------------------------------------


def file_name(cluster: str, taken_at: datetime, index: int) -> str:
    return f"{cluster}-{taken_at.astimezone(UTC).strftime(_STAMP)}-{index}{SUFFIX}"


@dataclass(frozen=True)
class SnapshotName:
    cluster: str
    taken_at: datetime
    index: int


def parse_file_name(name: str) -> SnapshotName | None:
    """The parts of a snapshot's file name; None for any other file. (A cluster id has no upper-case
    letter, so the time after it is unambiguous.)"""
    found = _NAME.match(name)
    if found is None:
        return None
    when = datetime.strptime(found["when"], _STAMP).replace(tzinfo=UTC)
    return SnapshotName(found["cluster"], when, int(found["index"]))


def default_directory(db_url: str | None = None) -> Path:
    """``snapshots`` beside the audit database when it is a SQLite file (the controller's state folder:
    ``~/.local/state/consul-reconciler``, or the image's volume), else beside the default database."""
    for url in (db_url, default_database_url()):
        if url and url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
            database = url[len("sqlite:///") :].split("?", 1)[0]
            if database and database != ":memory:" and not database.startswith("file:"):
                return Path(database).parent / "snapshots"
    return Path.home() / ".local" / "state" / "consul-reconciler" / "snapshots"


def resolve_directory(setting: str | None, db_url: str | None) -> Path:
    return Path(setting) if setting else default_directory(db_url)


# --- the disk -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedSnapshot:
    path: Path
    size: int  # bytes of the archive
    index: int  # raft index (meta.json)
    sha256: str  # of the archive file
    taken_at: datetime
    leader: str | None = None  # the node whose agent answered


def save_archive(
    directory: Path,
    cluster: str,
    fetch: Callable[[Callable[[bytes], object]], int | None],
    taken_at: datetime,
) -> SavedSnapshot:
    """Stream what ``fetch`` writes into a new file in ``directory``, verify it from the disk and rename it
    to its final name; SnapshotError (the temporary file removed) if anything fails."""
    _make_private_dir(directory)
    temporary = directory / f".{cluster}-{taken_at.astimezone(UTC).strftime(_STAMP)}-{os.getpid()}.partial"
    digest = hashlib.sha256()
    try:
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:

                def write(chunk: bytes) -> None:
                    digest.update(chunk)
                    out.write(chunk)

                header_index = fetch(write)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise SnapshotError(f"cannot write the snapshot in {directory}: {exc.strerror or exc}") from None
        try:
            info = verify_file(temporary)
        except SnapshotError as exc:
            raise SnapshotError(f"the snapshot Consul sent is unreadable: {exc}") from None
        if header_index is not None and header_index != info.index:
            log.warning(
                "snapshot: X-Consul-Index %d, meta.json Index %d; recording the latter",
                header_index,
                info.index,
            )
        final = directory / file_name(cluster, taken_at, info.index)
        try:
            size = temporary.stat().st_size
            os.replace(temporary, final)
            _sync_dir(directory)
        except OSError as exc:
            raise SnapshotError(f"cannot keep the snapshot as {final}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return SavedSnapshot(final, size, info.index, digest.hexdigest(), taken_at)


def _make_private_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SnapshotError(f"cannot create the snapshot folder {directory}: {exc.strerror or exc}") from None
    if not directory.is_dir():
        raise SnapshotError(f"the snapshot folder {directory} is not a folder")


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def snapshot_files(directory: Path, cluster: str) -> list[Path]:
    """The cluster's snapshots in ``directory``, oldest first (by time, then raft index)."""
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    found: list[tuple[datetime, int, Path]] = []
    for path in entries:
        parsed = parse_file_name(path.name)
        if parsed is not None and parsed.cluster == cluster and path.is_file():
            found.append((parsed.taken_at, parsed.index, path))
    return [path for _when, _index, path in sorted(found)]


def prune(directory: Path, cluster: str, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest snapshots of ``cluster`` (and temporary files of its snapshots
    that a stopped controller left); returns the snapshots deleted. A file that cannot be deleted is
    logged and kept."""
    removed: list[Path] = []
    files = snapshot_files(directory, cluster)
    for path in files[: max(0, len(files) - keep)]:
        try:
            path.unlink()
            removed.append(path)
        except OSError as exc:
            log.warning("snapshot %s could not be pruned: %s", path, exc.strerror or exc)
    for leftover in directory.glob(f".{cluster}-*.partial"):
        with contextlib.suppress(OSError):
            leftover.unlink()
    return removed


# --- Consul and the disk ----------------------------------------------------------------------------


BUSY_WINDOW = 15.0  # seconds a leader that cannot give a snapshot yet is asked again
BUSY = ("cannot take snapshot now", "No cluster leader")  # Consul's words for a passing state


class SnapshotTaker:
    """Takes one cluster's snapshots: from the leader's agent (any other server forwards the request to
    the leader, so the others are asked when the leader's agent does not answer at all), into
    ``directory``, keeping the ``keep`` newest. The token is sent and never logged."""

    def __init__(
        self,
        cluster: str,
        servers: Mapping[str, str],  # node -> agent HTTP "HOST:PORT" or "https://HOST:PORT"
        directory: Path,
        *,
        keep: int,
        timeout: float,
        token: str | None = None,
        tls: TLSClient | None = None,
        hosts: Mapping[str, str] | None = None,  # node -> its host in the topology (for the audit row)
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
        progress: Callable[[str], None] = lambda what: None,  # told while a snapshot comes in
    ) -> None:
        self.cluster = cluster
        self.servers = dict(servers)
        self.hosts = dict(hosts or {})
        self.directory = directory
        self.keep = keep
        self.timeout = timeout
        self._token = token
        self._tls = tls
        self._clock = clock
        self._sleep = sleep
        self._progress = progress  # a long snapshot is a wait, not a wedge (the controller's /healthz)

    def take(self, leader: str | None) -> SavedSnapshot:
        """A verified snapshot on the disk; ConsulError or SnapshotError naming why there is none.

        A leader refuses a snapshot for a moment after a raft configuration change (servers joined or
        promoted: "cannot take snapshot now, wait until the configuration entry at N has been
        applied", hashicorp/raft snapshot.go), and there is no leader for the seconds of an election:
        those are asked again every half second for up to ``BUSY_WINDOW`` seconds."""
        deadline = time.monotonic() + min(self.timeout, BUSY_WINDOW)
        while True:
            try:
                return self._take_once(leader)
            except ConsulError as exc:
                if not any(words in str(exc) for words in BUSY) or time.monotonic() >= deadline:
                    raise
                self._progress(f"the leader cannot give a snapshot yet: {exc}")
                self._sleep(0.5)

    def _take_once(self, leader: str | None) -> SavedSnapshot:
        problems: list[str] = []
        for node in self._order(leader):
            agent = ConsulAgent(self.servers[node], token=self._token, timeout=self.timeout, tls=self._tls)
            try:
                saved = save_archive(self.directory, self.cluster, self._reporting(agent), self._clock())
            except ConsulUnreachable as exc:
                problems.append(str(exc))
                continue
            return SavedSnapshot(saved.path, saved.size, saved.index, saved.sha256, saved.taken_at, node)
        raise ConsulError("; ".join(problems) or "no server agent is known to ask for a snapshot")

    def _reporting(self, agent: ConsulAgent) -> Callable[[Callable[[bytes], object]], int | None]:
        """``agent.save_snapshot``, telling ``progress`` when it begins and at most once a second after."""

        def fetch(write: Callable[[bytes], object]) -> int | None:
            received, told = 0, time.monotonic()
            self._progress(f"asking the agent at {agent.http} for a raft snapshot")

            def counted(chunk: bytes) -> None:
                nonlocal received, told
                write(chunk)
                received += len(chunk)
                if time.monotonic() - told >= 1.0:
                    told = time.monotonic()
                    self._progress(f"receiving a raft snapshot from {agent.http}: {received} bytes so far")

            return agent.save_snapshot(counted)

        return fetch

    def host_of(self, node: str | None) -> str | None:
        return self.hosts.get(node) if node else None

    def _order(self, leader: str | None) -> list[str]:
        return sorted(self.servers, key=lambda node: (node != leader, node))

    def prune(self) -> list[Path]:
        return prune(self.directory, self.cluster, self.keep)
