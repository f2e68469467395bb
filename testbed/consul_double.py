"""A model of Consul's HTTP API for tests. It is NOT Consul.

``ConsulDouble`` is a real HTTP/1.1 server (stdlib ``ThreadingHTTPServer``, loopback only) that answers the
small part of Consul's HTTP API this project uses, so the product's Consul client (py-consul over
``requests``) can talk to it exactly as to a Consul agent. Behaviour follows Consul's documentation and,
where the documentation is silent, Consul's source (agent/kvs_endpoint.go, agent/session_endpoint.go,
agent/consul/state/kvs.go, agent/consul/rpc.go blockingQuery). Status codes, bodies and headers aim to be
byte-for-byte what Consul answers for the cases modelled.

What it covers
--------------
* One raft-like index (starting at 10, as if a few bootstrap writes had happened), bumped by every write
  that changes state. Like Consul it keeps per-table indexes ("kvs" incl. tombstones, "sessions"); a
  write that changes nothing (same value, flags, session, lock index) bumps nothing.
* Read responses carry ``X-Consul-Index`` (never 0; at least 1), ``X-Consul-KnownLeader``,
  ``X-Consul-LastContact: 0``, ``X-Consul-Effective-Consistency`` and ``X-Consul-Query-Backend``.
  Which index a read reports, as in Consul:
  - a single existing key: its ``ModifyIndex``;
  - a missing single key: the KV table index (the last KV write or delete of any key), or 1;
  - ``?recurse`` / ``?keys``: the highest ``ModifyIndex`` among the matched keys or the tombstones
    (deletes) under the prefix; if there are none, the KV table index; or 1;
  - sessions (list/info/node): the sessions table index, or 1.
* ``/v1/kv/<key>`` GET (``recurse``, ``keys``, ``separator``/``seperator``, ``raw``), PUT (``flags``,
  ``cas``, ``acquire``, ``release``; body = raw value, an empty body stores a nil value shown as
  ``"Value": null``; body over 512 KiB -> 413), DELETE (``recurse``, ``cas``). A missing key answers 404
  with an empty body (headers still set). PUT answers ``true``/``false``; DELETE answers ``true``
  (``false`` only for a failed ``cas``; a ``cas`` delete of a missing key answers ``true`` like Consul).
  Conflicting flags -> 400 ``Conflicting flags: <encoded query>``. As in Consul's state store a plain
  or ``cas`` PUT keeps the lock holder (``Session``) but writes ``LockIndex`` 0; ``acquire`` and
  ``release`` write the body and flags too; ``release`` keeps ``LockIndex``.
* Locks: ``acquire`` by a session that does not exist -> 500 ``invalid session "<id>"``; lock-delay after
  a session is invalidated (destroyed or expired) rejects every acquire of the keys it held (``false``)
  for the session's LockDelay (capped at 60 s, like Consul).
* Blocking queries on KV GET and session list/info/node: ``?index=N&wait=D``. ``wait`` is a Go duration
  ("10s", "1m30s", "500ms"), default 5 min, capped at 10 min; a jitter of up to wait/16 is added (the
  ``jitter`` constructor argument replaces it; pass ``lambda wait: 0.0`` for none). The query answers at
  once if its index > N, else holds until something the query covers changes (the key, the prefix,
  the sessions table) and its index then is > N, or until the wait elapses (then it answers the current
  data and index, which may be unchanged). Invalid ``index``/``wait`` -> 400 ``Invalid index`` /
  ``Invalid wait time``. When N is AHEAD of the current index (the index went backwards for the
  client) Consul's server keeps blocking until its index passes N or the wait elapses (rpc.go
  blockingQuery); that is the default here. ``block_on_future_index=False`` answers such a query at
  once instead.
* Sessions: create (optional JSON body, keys case-insensitive: Name, Node, LockDelay as a Go duration
  string or a number of nanoseconds, values below 1000 meaning seconds as in Consul, Behavior
  release|delete, TTL, Checks/NodeChecks/ServiceChecks accepted and not evaluated), renew (404
  ``Session id '<id>' not found``), destroy (``true``, idempotent), info (``[]`` when unknown, as in
  Consul's code), list, node. A TTL outside [min_ttl, 24h] -> 500 with Consul's message
  ``Invalid Session TTL '<ns>', must be between [10s=24h0m0s]``; "0s" means no TTL. Renew does not
  change any index (it is not a raft write in Consul either).
* Session expiry: Consul promises not to expire a session before its TTL and uses 2 x TTL on the
  leader; here a session is invalidated exactly ``ttl_factor`` x TTL (default 2.0, allowed 1..2) after
  its creation or last renew, measured on ``clock``. Expired sessions are reaped before every request
  and by a background thread every ``tick`` seconds. Invalidation releases (Behavior=release) or
  deletes (Behavior=delete) the keys the session holds, at one new index, and starts their lock-delay.
  Without a leader no session expires; when a leader is back every TTL restarts ("The TTL is renewed
  on ... leader failover" in Consul's docs).
* Node deregistration: ``PUT /v1/catalog/deregister`` with ``{"Node": NAME}`` (answers ``true``;
  ``Node`` missing -> 400 ``Missing node name``) removes the node and invalidates every session on it,
  releasing or deleting their keys and starting their lock-delays, as Consul's state store does
  (agent/consul/state/catalog.go deleteNodeTxn: "Invalidate any sessions for this node"); a later
  session on that node -> 500 ``Missing node registration``. ``deregister_node(name)`` does the same
  from the test; ``register_node(name)`` puts a node back, as a live agent's anti-entropy sync
  re-registers its own node in Consul (agent/local/state.go).
* ``/v1/status/leader`` (``"127.0.0.1:8300"``, ``""`` without a leader) and ``/v1/status/peers``; a
  minimal ``/v1/agent/self``. Unknown paths -> 404, known paths with a wrong method -> 405.
* ACL: with ``acl_token`` set, requests other than /v1/status/* need that token (``X-Consul-Token``,
  ``Authorization: Bearer``, or ``?token=``): none -> 403 ``Permission denied``, another one -> 403
  ``ACL not found``.
* ``?dc=`` naming another datacenter -> 500 ``No path to datacenter``; ``?stale`` with
  ``?consistent`` -> 400.
* A snapshot restore: ``restore_snapshot({key: value})`` replaces the KV store by those entries at a
  raft index below the current one, as restoring an older snapshot does in Consul (the state store is
  replaced and the indexes are the snapshot's; agent/consul/fsm/snapshot.go). Blocking queries held
  past it keep waiting for an index they will not see until their wait elapses, as in Consul; this is
  what Consul's docs mean by "the index goes backwards".
* ``/v1/snapshot``. GET answers an archive in Consul's format (snapshot/snapshot.go New, snapshot/archive.go
  write): a gzip stream of a tar holding ``meta.json`` (raft's SnapshotMeta: Version 1, ID, Index, Term,
  Peers, Configuration, ConfigurationIndex, Size), ``state.bin`` and ``SHA256SUMS`` (``<hex>  <name>``
  lines), ``Content-Type: application/x-gzip``, ``X-Consul-Index`` the snapshot's raft index
  (agent/snapshot_endpoint.go sets the headers from the reply, whose Index is the snapshot's;
  agent/consul/snapshot_endpoint.go). ``state.bin`` is the double's own encoding of its KV entries
  (JSON; Consul's is msgpack of the whole state store). Without a leader: 500 ``No cluster leader``
  (the request is forwarded to the leader unless ``?stale``); then the ACL token (``Permission
  denied`` as above: the double's one token stands for a management token). PUT restores: the body is
  read as Consul's snapshot.Read does (gzip, members, SHA256SUMS; else 500 ``failed to read snapshot
  file: ...``; ``?stale`` -> 500 ``stale not allowed for restore``), the KV store is replaced by the
  archive's entries and the index becomes the snapshot's (see the restore below). Test knobs:
  ``snapshot_filter`` (bytes -> bytes) changes every archive GET sends, e.g. to cut it short; and
  ``snapshot_busy`` (a count): that many GETs answer as a leader does just after a raft configuration
  change (servers joined or promoted), 500 "Raft error when taking snapshot: cannot take snapshot now,
  wait until the configuration entry at N has been applied (have applied N-1)" (hashicorp/raft
  snapshot.go takeSnapshot, wrapped by Consul's snapshot/snapshot.go New), met on real Consul.
* Faults for tests: ``take_down()`` closes the listening socket (ECONNREFUSED) and drops open
  connections, including held blocking queries; ``bring_up()`` listens again on the same port with all
  state kept (session timers keep running meanwhile: the cluster is up, only this agent is
  unreachable). ``set_no_leader(True)``: every endpoint except /v1/status/* and /v1/agent/self (local to
  the agent in Consul) answers 500 ``No cluster leader``, except reads with ``?stale``, which are served
  with ``X-Consul-KnownLeader: false``. ``set_delay(s)`` holds every request s seconds (real time,
  not ``clock``) before it is handled.

Test knobs (not Consul settings): ``min_ttl`` (Consul's fixed 10 s floor, lower it for short sessions),
``ttl_factor``, ``jitter``, ``clock`` (all timers: TTLs, lock-delays, blocking-query waits; a fake
clock makes time explicit), ``tick``, ``nodes`` (extra registered node names besides ``node``),
``block_on_future_index``.

What it does not cover
----------------------
Everything else in Consul: catalog, health, services and checks (session checks are not evaluated,
so a session is never invalidated by a failing check), agent endpoints other than /v1/agent/self,
transactions (/v1/txn), events, prepared queries, ACL policies/rules (one all-powerful token),
namespaces/partitions, several datacenters, raft and real elections, snapshots of anything but KV, tombstone
reaping (tombstones are kept forever), KV key-character validation of the newest Consul releases,
TLS, gzip, ``?filter``, ``?cached``, ``?pretty`` beyond indentation, and Consul's performance.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hashlib
import io
import ipaddress
import json
import random
import re
import signal
import socket
import sys
import tarfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

__all__ = ["ConsulDouble", "format_go_duration", "main", "parse_go_duration", "snapshot_archive"]

INITIAL_INDEX = 10
DEFAULT_WAIT = 300.0  # Consul's default blocking wait: 5 min
MAX_WAIT = 600.0  # Consul's cap: 10 min
JITTER_FRACTION = 16  # Consul adds up to wait/16
SESSION_TTL_MIN = 10.0
SESSION_TTL_MAX = 86400.0
DEFAULT_LOCK_DELAY = 15.0
MAX_LOCK_DELAY = 60.0
LOCK_DELAY_MIN_THRESHOLD_NS = 1000  # Consul: a lock delay below 1000 ns is taken as seconds
KV_MAX_VALUE_SIZE = 512 * 1024
CONSUL_VERSION = "1.18.1"
RAFT_PORT = 8300
SERF_LAN_PORT = 8301
_UINT64_MAX = 2**64 - 1


# --- Go helpers ------------------------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)?")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration ("300ms", "1m30s", "-1.5h", "0"); ValueError like time.ParseDuration."""
    rest = text
    sign = 1.0
    if rest[:1] in ("+", "-"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0.0
    pos = 0
    while pos < len(rest):
        match = _DURATION_PART.match(rest, pos)
        if match is None:
            raise ValueError(f'time: invalid duration "{text}"')
        if match.group(2) is None:
            raise ValueError(f'time: missing unit in duration "{text}"')
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def format_go_duration(seconds: float) -> str:
    """Go's Duration.String(): 10 -> "10s", 86400 -> "24h0m0s", 0.5 -> "500ms", 0 -> "0s"."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)

    def fraction(value: int, unit: int) -> str:
        whole, part = divmod(value, unit)
        digits = len(str(unit)) - 1
        text = str(whole) if part == 0 else f"{whole}.{part:0{digits}d}".rstrip("0")
        return text

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{fraction(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{fraction(ns, 1_000_000)}ms"
    hours, ns = divmod(ns, 3_600 * 10**9)
    minutes, ns = divmod(ns, 60 * 10**9)
    secs = fraction(ns, 10**9)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def _parse_uint(text: str) -> int:
    """Go's strconv.ParseUint(text, 10, 64), with its error texts."""
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    value = int(text)
    if value > _UINT64_MAX:
        raise ValueError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


def _go_json(value: Any, pretty: bool = False) -> bytes:
    """JSON as Go's encoding/json writes it (compact, HTML characters escaped)."""
    if pretty:
        text = json.dumps(value, indent=4, ensure_ascii=False) + "\n"
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode("utf-8")


def _default_jitter(wait: float) -> float:
    return random.uniform(0.0, wait / JITTER_FRACTION)


# --- snapshot archives (snapshot/archive.go) --------------------------------------------------------


def snapshot_archive(index: int, state: bytes, *, term: int = 1, sums: str | None = None) -> bytes:
    """A snapshot archive as Consul's snapshot.New writes it: gzip(tar(meta.json, state.bin, SHA256SUMS)).
    ``sums`` replaces the SHA256SUMS text (tests make bad ones)."""
    meta = {
        "Version": 1,
        "ID": f"{term}-{index}-{int(time.time() * 1000)}",
        "Index": index,
        "Term": term,
        "Peers": "",
        "Configuration": {"Servers": [{"Suffrage": 0, "ID": "double", "Address": f"127.0.0.1:{RAFT_PORT}"}]},
        "ConfigurationIndex": 1,
        "Size": len(state),
    }
    meta_bytes = json.dumps(meta).encode() + b"\n"  # Go's json.Encoder ends the value with a newline
    if sums is None:
        sums = "".join(
            f"{hashlib.sha256(data).hexdigest()}  {name}\n"
            for name, data in (("meta.json", meta_bytes), ("state.bin", state))
        )
    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in (("meta.json", meta_bytes), ("state.bin", state), ("SHA256SUMS", sums.encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(tarred.getvalue(), mtime=0)


def read_snapshot_archive(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(meta, state) of an archive, checked as Consul's snapshot.Read does; ValueError with its words."""
    try:
        tarred = gzip.decompress(data)
    except (OSError, EOFError) as error:
        raise ValueError(f"failed to decompress snapshot: {error}") from None
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tarred), mode="r:") as archive:
            for member in archive:
                if member.name not in ("meta.json", "state.bin", "SHA256SUMS"):
                    raise ValueError(f"unexpected file {member.name!r} in snapshot")
                extracted = archive.extractfile(member)
                members[member.name] = extracted.read() if extracted is not None else b""
    except tarfile.TarError as error:
        raise ValueError(f"failed reading snapshot: {error}") from None
    listed: dict[str, str] = {}
    for line in members.get("SHA256SUMS", b"").decode("utf-8", "replace").splitlines():
        digest, _, name = line.partition("  ")
        listed[name.strip()] = digest.lower()
    for name in ("meta.json", "state.bin"):
        if name not in listed:
            raise ValueError(f"failed checking integrity of snapshot: list missing hash for {name!r}")
        if listed[name] != hashlib.sha256(members.get(name, b"")).hexdigest():
            raise ValueError(f"failed checking integrity of snapshot: hash check failed for {name!r}")
    try:
        meta = json.loads(members["meta.json"])
    except ValueError as error:
        raise ValueError(f"failed to decode snapshot metadata: {error}") from None
    return meta, members["state.bin"]


# --- state -----------------------------------------------------------------------------------------


@dataclass
class _Entry:
    key: str
    value: bytes | None
    flags: int
    lock_index: int
    session: str  # "" when no session holds the lock
    create_index: int = 0
    modify_index: int = 0

    def same_content(self, other: _Entry) -> bool:
        # Consul's DirEntry.Equal: indexes are not compared
        return (self.key, self.value or b"", self.flags, self.lock_index, self.session) == (
            other.key,
            other.value or b"",
            other.flags,
            other.lock_index,
            other.session,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": None if self.value is None else base64.b64encode(self.value).decode("ascii"),
        }
        if self.session:
            out["Session"] = self.session
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out


@dataclass
class _Session:
    id: str
    name: str
    node: str
    lock_delay_ns: int
    behavior: str
    ttl: str
    ttl_seconds: float
    node_checks: list[str]
    service_checks: list[Any] | None
    create_index: int
    expires_at: float | None = None  # on the double's clock

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": self.lock_delay_ns,
            "Behavior": self.behavior,
            "TTL": self.ttl,
            "NodeChecks": list(self.node_checks),
            "ServiceChecks": self.service_checks,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.create_index,
        }


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


class _HTTPError(Exception):
    def __init__(self, status: int, text: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or []


class _Dropped(Exception):
    """The double was taken down while this request was being handled: close without answering."""


_TEXT = ("Content-Type", "text/plain; charset=utf-8")
_JSON = ("Content-Type", "application/json")


def _text(status: int, text: str) -> _Response:
    return _Response(status, text.encode("utf-8"), [_TEXT])


@dataclass
class _Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    generation: int

    def has(self, name: str) -> bool:
        return name in self.query

    def get(self, name: str) -> str:
        values = self.query.get(name)
        return values[0] if values else ""


@dataclass
class _ReadOptions:
    min_index: int
    wait: float  # seconds, jitter included
    consistency: str  # leader | consistent | stale


# --- HTTP plumbing ---------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], double: ConsulDouble, generation: int) -> None:
        self.double = double
        self.generation = generation
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            return  # a connection dropped by take_down() or by the client
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid 40 ms delayed-ACK stalls
    server_version = "consul-double"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.double._register_connection(self.connection, self.server.generation)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.double._unregister_connection(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self, method: str) -> None:
        body = self._read_body()
        headers = {name.lower(): value for name, value in self.headers.items()}
        response = self.server.double._handle(method, self.path, headers, body, self.server.generation)
        if response is None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if method != "HEAD" and response.body:
            self.wfile.write(response.body)


# --- the double ------------------------------------------------------------------------------------


class ConsulDouble:
    """A model of one Consul agent+server's HTTP API (see the module docstring). Loopback only."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        datacenter: str = "dc1",
        node: str = "double",
        acl_token: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_ttl: float = SESSION_TTL_MIN,
        ttl_factor: float = 2.0,
        jitter: Callable[[float], float] | None = None,
        block_on_future_index: bool = True,
        nodes: Iterable[str] = (),
        tick: float = 0.05,
    ) -> None:
        if host == "localhost":
            host = "127.0.0.1"
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"ConsulDouble listens on loopback addresses only, not {host!r}")
        if not 1.0 <= ttl_factor <= 2.0:
            raise ValueError("ttl_factor must be between 1 and 2 (Consul invalidates between TTL and 2xTTL)")
        self.host = host
        self.port = port
        self.datacenter = datacenter
        self.node = node
        self.acl_token = acl_token
        self.min_ttl = min_ttl
        self.ttl_factor = ttl_factor
        self.block_on_future_index = block_on_future_index
        self._clock = clock
        self._jitter = jitter or _default_jitter
        self._nodes = {node, *nodes}
        self._tick = tick

        self._cond = threading.Condition(threading.Lock())
        self._index = INITIAL_INDEX
        self._kvs_index = 0
        self._sessions_index = 0
        self._kv: dict[str, _Entry] = {}
        self._tombstones: dict[str, int] = {}
        self._lock_delays: dict[str, float] = {}
        self._sessions: dict[str, _Session] = {}
        self._session_gone: dict[str, int] = {}
        self._no_leader = False
        self._delay = 0.0
        self._log: list[tuple[str, str]] = []
        self.snapshot_filter: Callable[[bytes], bytes] | None = None  # test knob: alters each archive sent
        self.snapshot_busy = 0  # test knob: this many snapshot GETs meet a configuration not yet applied

        self._generation = 0
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._connections: dict[socket.socket, int] = {}
        self._conn_lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def start(self) -> ConsulDouble:
        if self._reaper is None:
            self._stop.clear()
            self._reaper = threading.Thread(target=self._reap_loop, name="consul-double-reaper", daemon=True)
            self._reaper.start()
        self.bring_up()
        return self

    def stop(self) -> None:
        self.take_down()
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
            self._reaper = None

    def __enter__(self) -> ConsulDouble:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def bring_up(self) -> None:
        """Listen (again) on the same port; all state is kept."""
        if self._server is not None:
            return
        with self._cond:
            generation = self._generation
        server = _Server((self.host, self.port), self, generation)
        self.port = server.server_address[1]
        self._server = server
        self._serve_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="consul-double-http",
            daemon=True,
        )
        self._serve_thread.start()

    def take_down(self) -> None:
        """Close the listening socket (new connections: ECONNREFUSED) and drop every open connection."""
        server = self._server
        if server is None:
            return
        self._server = None
        server.shutdown()
        server.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join(timeout=5)
            self._serve_thread = None
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
        with self._conn_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _register_connection(self, connection: socket.socket, generation: int) -> None:
        with self._conn_lock:
            self._connections[connection] = generation
        with self._cond:
            stale = generation != self._generation
        if stale:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _unregister_connection(self, connection: socket.socket) -> None:
        with self._conn_lock:
            self._connections.pop(connection, None)

    # --- fault knobs -------------------------------------------------------------------------------

    def set_no_leader(self, on: bool) -> None:
        with self._cond:
            if self._no_leader and not on:
                now = self._clock()
                for session in self._sessions.values():  # a new leader restarts every TTL
                    if session.ttl_seconds > 0:
                        session.expires_at = now + session.ttl_seconds * self.ttl_factor
            self._no_leader = on
            self._cond.notify_all()

    def set_delay(self, seconds: float) -> None:
        with self._cond:
            self._delay = max(0.0, seconds)

    def requests(self) -> list[tuple[str, str]]:
        """(method, path?query) of every request received, oldest first."""
        with self._cond:
            return list(self._log)

    # --- direct state access for tests -------------------------------------------------------------

    @property
    def index(self) -> int:
        """The raft-like index: the index of the last write that changed something."""
        with self._cond:
            return self._index

    def kv_get(self, key: str) -> dict[str, Any] | None:
        """The entry as py-consul returns it (Value as bytes or None; Session only when held)."""
        with self._cond:
            self._reap_locked()
            entry = self._kv.get(key)
            if entry is None:
                return None
            out = entry.to_json()
            out["Value"] = entry.value
            return out

    def kv_put(self, key: str, value: bytes | None, flags: int = 0) -> int:
        """Write like a plain PUT (indexes bumped only on a change); returns the key's ModifyIndex."""
        with self._cond:
            self._kv_set_locked(key, value or None, flags)
            return self._kv[key].modify_index

    def kv_delete(self, key: str, recurse: bool = False) -> None:
        with self._cond:
            if recurse:
                self._kv_delete_tree_locked(key)
            else:
                self._kv_delete_locked(key)

    def restore_snapshot(self, entries: dict[str, bytes]) -> int:
        """Replace the KV store as restoring an older snapshot does; returns the (lower) index."""
        with self._cond:
            index = INITIAL_INDEX + len(entries)
            if index >= self._index:
                raise ValueError("an older snapshot has a lower index than the state; write more first")
            self._kv = {
                key: _Entry(key, value, 0, lock_index=0, session="", create_index=i, modify_index=i)
                for i, (key, value) in enumerate(sorted(entries.items()), start=INITIAL_INDEX + 1)
            }
            self._tombstones.clear()
            self._index = self._kvs_index = index
            self._cond.notify_all()
            return index

    def invalidate_session(self, session_id: str) -> bool:
        """Invalidate a session as its TTL expiring would; False if it does not exist."""
        with self._cond:
            return self._invalidate_locked(session_id)

    def deregister_node(self, node: str) -> int:
        """Remove ``node`` from the catalog and invalidate its sessions; the number invalidated."""
        with self._cond:
            return self._deregister_locked(node)

    def register_node(self, node: str) -> None:
        with self._cond:
            self._nodes.add(node)
            self._bump()

    def _deregister_locked(self, node: str) -> int:
        self._nodes.discard(node)
        gone = [s.id for s in self._sessions.values() if s.node == node]
        for session_id in gone:
            self._invalidate_locked(session_id)
        if not gone:
            self._bump()
        return len(gone)

    def session_ids(self) -> list[str]:
        with self._cond:
            self._reap_locked()
            return sorted(self._sessions)

    # --- write primitives (call with self._cond held) ----------------------------------------------

    def _bump(self) -> int:
        self._index += 1
        return self._index

    def _store_locked(self, new: _Entry) -> bool:
        """kvsSetTxn: store unless nothing changes; True if something changed."""
        existing = self._kv.get(new.key)
        if existing is not None and existing.same_content(new):
            return False
        index = self._bump()
        new.create_index = existing.create_index if existing is not None else index
        new.modify_index = index
        self._kv[new.key] = new
        self._kvs_index = index
        self._cond.notify_all()
        return True

    def _kv_set_locked(self, key: str, value: bytes | None, flags: int) -> None:
        existing = self._kv.get(key)
        session = existing.session if existing is not None else ""
        self._store_locked(_Entry(key, value, flags, lock_index=0, session=session))

    def _kv_delete_locked(self, key: str) -> None:
        if key not in self._kv:
            return
        index = self._bump()
        del self._kv[key]
        self._tombstones[key] = index
        self._kvs_index = index
        self._cond.notify_all()

    def _kv_delete_tree_locked(self, prefix: str) -> None:
        keys = [key for key in self._kv if key.startswith(prefix)]
        if not keys:
            return
        index = self._bump()
        for key in keys:
            del self._kv[key]
            self._tombstones[key] = index
        self._kvs_index = index
        self._cond.notify_all()

    def _invalidate_locked(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        index = self._bump()
        self._sessions_index = index
        self._session_gone[session_id] = index
        delay = min(session.lock_delay_ns / 1e9, MAX_LOCK_DELAY)
        now = self._clock()
        for key, entry in sorted(self._kv.items()):
            if entry.session != session_id:
                continue
            if session.behavior == "delete":
                del self._kv[key]
                self._tombstones[key] = index
            else:
                self._kv[key] = replace(entry, session="", modify_index=index)
            self._kvs_index = index
            if delay > 0:
                self._lock_delays[key] = now + delay
        self._cond.notify_all()
        return True

    def _reap_locked(self) -> None:
        if self._no_leader:
            return
        now = self._clock()
        for session in list(self._sessions.values()):
            if session.expires_at is not None and now >= session.expires_at:
                self._invalidate_locked(session.id)
        for key, until in list(self._lock_delays.items()):
            if until <= now:
                del self._lock_delays[key]

    def _reap_loop(self) -> None:
        while not self._stop.wait(self._tick):
            with self._cond:
                self._reap_locked()

    # --- request handling --------------------------------------------------------------------------

    def _handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes, generation: int
    ) -> _Response | None:
        with self._cond:
            self._log.append((method, target))
            delay = self._delay
        try:
            if delay > 0:
                self._sleep_real(delay, generation)
            split = urlsplit(target)
            request = _Request(
                method=method,
                target=target,
                path=unquote(split.path),
                query=parse_qs(split.query, keep_blank_values=True),
                headers=headers,
                body=body,
                generation=generation,
            )
            return self._route(request)
        except _Dropped:
            return None
        except _HTTPError as error:
            response = _text(error.status, error.text)
            response.headers.extend(error.headers)
            return response
        except Exception as error:  # a bug in the double: answer it, never look like a network fault
            traceback.print_exc()
            return _text(500, f"consul-double internal error: {error!r}")

    def _sleep_real(self, seconds: float, generation: int) -> None:
        deadline = time.monotonic() + seconds
        with self._cond:
            while generation == self._generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)
            raise _Dropped

    _ROUTES: tuple[tuple[str, tuple[str, ...], str], ...] = (
        ("/v1/status/leader", ("GET",), "_status_leader"),
        ("/v1/status/peers", ("GET",), "_status_peers"),
        ("/v1/agent/self", ("GET",), "_agent_self"),
        ("/v1/kv/", ("GET", "PUT", "DELETE"), "_kv_endpoint"),
        ("/v1/session/create", ("PUT",), "_session_create"),
        ("/v1/session/destroy/", ("PUT",), "_session_destroy"),
        ("/v1/session/renew/", ("PUT",), "_session_renew"),
        ("/v1/session/info/", ("GET",), "_session_info"),
        ("/v1/session/node/", ("GET",), "_session_node"),
        ("/v1/session/list", ("GET",), "_session_list"),
        ("/v1/catalog/deregister", ("PUT",), "_catalog_deregister"),
        ("/v1/snapshot", ("GET", "PUT"), "_snapshot"),
    )

    def _route(self, request: _Request) -> _Response:
        route = next((r for r in self._ROUTES if self._matches(r[0], request.path)), None)
        if route is None:
            raise _HTTPError(404, "Invalid URL path: not a recognized HTTP API endpoint")
        prefix, methods, name = route
        method = "GET" if request.method == "HEAD" else request.method
        if method not in methods:
            raise _HTTPError(405, f"method {request.method} not allowed", [("Allow", ",".join(methods))])
        handler: Callable[[_Request], _Response] = getattr(self, name)
        if prefix.startswith("/v1/status/"):
            return handler(request)  # no ACL, answered even without a leader
        self._check_dc(request)
        if name == "_agent_self":
            self._check_acl(request)  # local to the agent: answered even without a leader
        # the other handlers check (in Consul's order) their parameters, the leader, then the ACL token
        return handler(request)

    @staticmethod
    def _matches(prefix: str, path: str) -> bool:
        return path.startswith(prefix) if prefix.endswith("/") else path == prefix

    def _check_dc(self, request: _Request) -> None:
        dc = request.get("dc")
        if dc and dc != self.datacenter:
            raise _HTTPError(500, "No path to datacenter")

    def _check_acl(self, request: _Request) -> None:
        if self.acl_token is None:
            return
        token = request.get("token") or request.headers.get("x-consul-token", "")
        if not token:
            authorization = request.headers.get("authorization", "")
            if authorization.lower().startswith("bearer "):
                token = authorization[7:].strip()
        if not token:
            raise _HTTPError(403, "Permission denied")
        if token != self.acl_token:
            raise _HTTPError(403, "ACL not found")

    def _check_leader(self, stale_ok: bool = False) -> None:
        with self._cond:
            if self._no_leader and not stale_ok:
                raise _HTTPError(500, "No cluster leader")

    def _read_options(self, request: _Request) -> _ReadOptions:
        """Consul's parseWait + parseConsistency (400s)."""
        wait = 0.0
        if request.get("wait"):
            try:
                wait = parse_go_duration(request.get("wait"))
            except ValueError:
                raise _HTTPError(400, "Invalid wait time") from None
        min_index = 0
        if request.get("index"):
            try:
                min_index = _parse_uint(request.get("index"))
            except ValueError:
                raise _HTTPError(400, "Invalid index") from None
        stale, consistent = request.has("stale"), request.has("consistent")
        if stale and consistent:
            raise _HTTPError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        if wait > MAX_WAIT:
            wait = MAX_WAIT
        elif wait <= 0:
            wait = DEFAULT_WAIT
        if min_index > 0:
            wait += max(0.0, self._jitter(wait))
        consistency = "stale" if stale else "consistent" if consistent else "leader"
        return _ReadOptions(min_index=min_index, wait=wait, consistency=consistency)

    def _read(
        self,
        request: _Request,
        options: _ReadOptions,
        compute: Callable[[], tuple[int, _Response]],
        watch: Callable[[], object],
    ) -> _Response:
        """Run a (blocking) read the way Consul's blockingQuery does; then add the X-Consul-* headers."""
        self._check_leader(stale_ok=options.consistency == "stale")
        self._check_acl(request)
        with self._cond:
            self._reap_locked()
            index, response = compute()
            target = options.min_index
            answered = target == 0 or index > target or (not self.block_on_future_index and target > index)
            deadline = self._clock() + options.wait
            token = watch()
            while not answered:
                if request.generation != self._generation:
                    raise _Dropped
                remaining = deadline - self._clock()
                if remaining <= 0:  # the wait elapsed: answer the current data and index
                    index, response = compute()
                    break
                self._cond.wait(min(remaining, self._tick))
                if request.generation != self._generation:
                    raise _Dropped
                self._reap_locked()
                current = watch()
                if current != token:  # something the query covers changed: run it again
                    token = current
                    index, response = compute()
                    answered = index > target
            response.headers.extend(
                [
                    ("X-Consul-Index", str(max(index, 1))),
                    ("X-Consul-Knownleader", "false" if self._no_leader else "true"),
                    ("X-Consul-Lastcontact", "0"),
                    ("X-Consul-Effective-Consistency", options.consistency),
                    ("X-Consul-Query-Backend", "blocking-query"),
                ]
            )
            return response

    def _json(self, request: _Request, value: Any, status: int = 200) -> _Response:
        return _Response(status, _go_json(value, pretty=request.has("pretty")), [_JSON])

    # --- status / agent ----------------------------------------------------------------------------

    def _status_leader(self, request: _Request) -> _Response:
        with self._cond:
            leader = "" if self._no_leader else f"127.0.0.1:{RAFT_PORT}"
        return self._json(request, leader)

    def _status_peers(self, request: _Request) -> _Response:
        return self._json(request, [f"127.0.0.1:{RAFT_PORT}"])

    def _agent_self(self, request: _Request) -> _Response:
        node_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.node}.{self.datacenter}.consul-double"))
        return self._json(
            request,
            {
                "Config": {
                    "Datacenter": self.datacenter,
                    "NodeName": self.node,
                    "NodeID": node_id,
                    "Server": True,
                    "Revision": "consul-double",
                    "Version": CONSUL_VERSION,
                },
                "Member": {
                    "Name": self.node,
                    "Addr": "127.0.0.1",
                    "Port": SERF_LAN_PORT,
                    "Tags": {
                        "role": "consul",
                        "dc": self.datacenter,
                        "port": str(RAFT_PORT),
                        "id": node_id,
                        "build": CONSUL_VERSION,
                    },
                    "Status": 1,
                },
                "Meta": {},
            },
        )

    # --- snapshots ---------------------------------------------------------------------------------

    def _snapshot(self, request: _Request) -> _Response:
        """agent/consul/snapshot_endpoint.go dispatchSnapshotRequest: leader forwarding, then the token."""
        stale = request.has("stale")
        if request.method == "PUT" and stale:
            raise _HTTPError(500, "stale not allowed for restore")
        self._check_leader(stale_ok=stale)
        self._check_acl(request)
        if request.method == "PUT":
            return self._snapshot_restore(request.body)
        with self._cond:
            index = self._index
            if self.snapshot_busy > 0:
                self.snapshot_busy -= 1
                raise _HTTPError(
                    500,
                    "Raft error when taking snapshot: cannot take snapshot now, wait until the "
                    f"configuration entry at {index + 1} has been applied (have applied {index})",
                )
            state = json.dumps(
                {"Index": self._kvs_index, "KV": [e.to_json() for _k, e in sorted(self._kv.items())]}
            ).encode()
            damage = self.snapshot_filter
        archive = snapshot_archive(index, state)
        if damage is not None:
            archive = damage(archive)
        return _Response(
            200, archive, [("Content-Type", "application/x-gzip"), ("X-Consul-Index", str(index))]
        )

    def _snapshot_restore(self, body: bytes) -> _Response:
        try:
            meta, state = read_snapshot_archive(body)
            saved = json.loads(state)
            entries = {
                e["Key"]: _Entry(
                    e["Key"],
                    None if e["Value"] is None else base64.b64decode(e["Value"]),
                    int(e["Flags"]),
                    lock_index=0,
                    session="",
                    create_index=int(e["CreateIndex"]),
                    modify_index=int(e["ModifyIndex"]),
                )
                for e in saved["KV"]
            }
        except (ValueError, KeyError, TypeError) as error:
            raise _HTTPError(500, f"failed to read snapshot file: {error}") from None
        with self._cond:
            self._kv = entries
            self._tombstones.clear()
            self._sessions.clear()
            self._index = int(meta["Index"])
            self._kvs_index = int(saved.get("Index") or 0)
            self._cond.notify_all()
        return _Response(200)

    # --- KV ----------------------------------------------------------------------------------------

    def _kv_endpoint(self, request: _Request) -> _Response:
        key = request.path[len("/v1/kv/") :]
        options = self._read_options(request)  # Consul parses index/wait for every KV method
        if request.method in ("GET", "HEAD"):
            if request.has("keys"):
                return self._kv_keys(request, key, options)
            if request.has("recurse"):
                return self._kv_list(request, key, options)
            if not key:
                raise _HTTPError(400, "Missing key name")
            return self._kv_get(request, key, options)
        if request.method == "PUT":
            return self._kv_put(request, key)
        return self._kv_delete(request, key)

    def _prefix_index(self, prefix: str) -> int:
        """kvsListTxn: the highest index among entries and tombstones under prefix, else the table index."""
        if prefix == "":
            return self._kvs_index
        index = max((e.modify_index for k, e in self._kv.items() if k.startswith(prefix)), default=0)
        index = max(index, max((i for k, i in self._tombstones.items() if k.startswith(prefix)), default=0))
        return index or self._kvs_index

    def _prefix_watch(self, prefix: str) -> Callable[[], object]:
        def watch() -> object:
            if prefix == "":
                return self._kvs_index
            return self._prefix_index(prefix)

        return watch

    def _kv_get(self, request: _Request, key: str, options: _ReadOptions) -> _Response:
        def compute() -> tuple[int, _Response]:
            entry = self._kv.get(key)
            if entry is None:
                return self._kvs_index, _Response(404)
            if request.has("raw"):
                return entry.modify_index, _Response(
                    200,
                    entry.value or b"",
                    [
                        ("Content-Type", "text/plain"),
                        ("X-Content-Type-Options", "nosniff"),
                        ("Content-Security-Policy", "sandbox"),
                    ],
                )
            return entry.modify_index, self._json(request, [entry.to_json()])

        def watch() -> object:
            entry = self._kv.get(key)
            return (entry.modify_index if entry else 0, self._tombstones.get(key, 0))

        return self._read(request, options, compute, watch)

    def _kv_list(self, request: _Request, prefix: str, options: _ReadOptions) -> _Response:
        def compute() -> tuple[int, _Response]:
            entries = [self._kv[k] for k in sorted(self._kv) if k.startswith(prefix)]
            index = self._prefix_index(prefix)
            if not entries:
                return index, _Response(404)
            return index, self._json(request, [e.to_json() for e in entries])

        return self._read(request, options, compute, self._prefix_watch(prefix))

    def _kv_keys(self, request: _Request, prefix: str, options: _ReadOptions) -> _Response:
        separator = request.get("seperator") if request.has("seperator") else ""
        if request.has("separator"):
            separator = request.get("separator")

        def compute() -> tuple[int, _Response]:
            keys: list[str] = []
            last = None
            for key in sorted(self._kv):
                if not key.startswith(prefix):
                    continue
                if separator:
                    cut = key.find(separator, len(prefix))
                    if cut >= 0:
                        key = key[: cut + len(separator)]
                        if key == last:
                            continue
                        last = key
                keys.append(key)
            index = self._prefix_index(prefix)
            if not keys and prefix:
                return index, _Response(404)
            return index, self._json(request, keys)

        return self._read(request, options, compute, self._prefix_watch(prefix))

    def _kv_put(self, request: _Request, key: str) -> _Response:
        if not key:
            raise _HTTPError(400, "Missing key name")
        self._conflicting_flags(request, "cas", "acquire", "release")
        flags = 0
        cas: int | None = None
        try:
            if request.has("flags"):
                flags = _parse_uint(request.get("flags"))
            if request.has("cas"):
                cas = _parse_uint(request.get("cas"))
        except ValueError as error:
            raise _HTTPError(500, str(error)) from None
        if len(request.body) > KV_MAX_VALUE_SIZE:
            raise _HTTPError(
                413,
                (
                    f"Request body({len(request.body)} bytes) too large, "
                    f"max size: {KV_MAX_VALUE_SIZE} bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
                ),
            )
        value = request.body or None  # an empty body stores a nil value, like Consul
        self._check_leader()
        self._check_acl(request)
        with self._cond:
            self._reap_locked()
            if request.has("acquire"):
                result = self._kv_lock_locked(key, value, flags, request.get("acquire"))
            elif request.has("release"):
                result = self._kv_unlock_locked(key, value, flags, request.get("release"))
            elif cas is not None:
                existing = self._kv.get(key)
                result = (
                    (existing is None)
                    if cas == 0
                    else (existing is not None and existing.modify_index == cas)
                )
                if result:
                    self._kv_set_locked(key, value, flags)
            else:
                self._kv_set_locked(key, value, flags)
                result = True
        return self._json(request, result)

    def _kv_lock_locked(self, key: str, value: bytes | None, flags: int, session_id: str) -> bool:
        until = self._lock_delays.get(key)
        if until is not None and until > self._clock():
            return False  # Consul checks the lock-delay before anything else
        if not session_id:
            raise _HTTPError(500, "missing session")
        if session_id not in self._sessions:
            raise _HTTPError(500, f"invalid session {json.dumps(session_id)}")
        existing = self._kv.get(key)
        if existing is None:
            lock_index = 1
        elif existing.session == session_id:
            lock_index = existing.lock_index
        elif existing.session:
            return False
        else:
            lock_index = existing.lock_index + 1
        self._store_locked(_Entry(key, value, flags, lock_index=lock_index, session=session_id))
        return True

    def _kv_unlock_locked(self, key: str, value: bytes | None, flags: int, session_id: str) -> bool:
        if not session_id:
            raise _HTTPError(500, "missing session")
        existing = self._kv.get(key)
        if existing is None or existing.session != session_id:
            return False
        self._store_locked(_Entry(key, value, flags, lock_index=existing.lock_index, session=""))
        return True

    def _kv_delete(self, request: _Request, key: str) -> _Response:
        self._conflicting_flags(request, "recurse", "cas")
        recurse = request.has("recurse")
        if not recurse and not key:
            raise _HTTPError(400, "Missing key name")
        cas: int | None = None
        if request.has("cas"):
            try:
                cas = _parse_uint(request.get("cas"))
            except ValueError as error:
                raise _HTTPError(500, str(error)) from None
        self._check_leader()
        self._check_acl(request)
        with self._cond:
            self._reap_locked()
            result = True
            if recurse:
                self._kv_delete_tree_locked(key)
            elif cas is not None:
                existing = self._kv.get(key)
                if existing is not None:
                    result = existing.modify_index == cas
                    if result:
                        self._kv_delete_locked(key)
            else:
                self._kv_delete_locked(key)
        return self._json(request, result)

    @staticmethod
    def _conflicting_flags(request: _Request, *flags: str) -> None:
        if sum(1 for flag in flags if request.has(flag)) > 1:
            pairs = [(name, value) for name in sorted(request.query) for value in request.query[name]]
            raise _HTTPError(400, f"Conflicting flags: {urlencode(pairs)}\n")

    # --- sessions ----------------------------------------------------------------------------------

    def _session_create(self, request: _Request) -> _Response:
        fields: dict[str, Any] = {}
        if request.body:
            try:
                decoded = json.loads(request.body)
                if not isinstance(decoded, dict):
                    raise ValueError("json: cannot unmarshal into Go value of type structs.Session")
            except ValueError as error:
                raise _HTTPError(400, f"Request decode failed: {error}") from None
            fields = {str(name).lower(): value for name, value in decoded.items()}
        try:
            name = self._string_field(fields, "name", "")
            node = self._string_field(fields, "node", self.node) or self.node
            behavior = self._string_field(fields, "behavior", "")
            ttl = self._string_field(fields, "ttl", "")
            lock_delay_ns = self._lock_delay(fields.get("lockdelay", int(DEFAULT_LOCK_DELAY * 1e9)))
        except ValueError as error:
            raise _HTTPError(400, f"Request decode failed: {error}") from None
        if "checks" in fields or "nodechecks" in fields:
            raw_checks = fields.get("nodechecks", fields.get("checks")) or []
            node_checks = [str(check) for check in raw_checks] if isinstance(raw_checks, list) else []
        else:
            node_checks = ["serfHealth"]
        service_checks = fields.get("servicechecks") or None

        self._check_leader()
        self._check_acl(request)
        if behavior == "":
            behavior = "release"
        elif behavior not in ("release", "delete"):
            raise _HTTPError(500, f"Invalid Behavior setting '{behavior}'")
        ttl_seconds = 0.0
        if ttl:
            try:
                ttl_seconds = parse_go_duration(ttl)
            except ValueError as error:
                raise _HTTPError(500, f"Session TTL '{ttl}' invalid: {error}") from None
            if ttl_seconds != 0 and not self.min_ttl <= ttl_seconds <= SESSION_TTL_MAX:
                raise _HTTPError(
                    500,
                    (
                        f"Invalid Session TTL '{round(ttl_seconds * 1e9)}', must be between "
                        f"[{format_go_duration(self.min_ttl)}={format_go_duration(SESSION_TTL_MAX)}]"
                    ),
                )
        if node not in self._nodes:
            raise _HTTPError(500, "Missing node registration")
        with self._cond:
            self._reap_locked()
            session_id = str(uuid.uuid4())
            index = self._bump()
            session = _Session(
                id=session_id,
                name=name,
                node=node,
                lock_delay_ns=lock_delay_ns,
                behavior=behavior,
                ttl=ttl,
                ttl_seconds=max(ttl_seconds, 0.0),
                node_checks=node_checks,
                service_checks=service_checks if isinstance(service_checks, list) else None,
                create_index=index,
            )
            if session.ttl_seconds > 0:
                session.expires_at = self._clock() + session.ttl_seconds * self.ttl_factor
            self._sessions[session_id] = session
            self._sessions_index = index
            self._cond.notify_all()
        return self._json(request, {"ID": session_id})

    @staticmethod
    def _string_field(fields: dict[str, Any], name: str, default: str) -> str:
        value = fields.get(name, default)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ValueError(
                f"json: cannot unmarshal {type(value).__name__} into Go struct field "
                f"Session.{name} of type string"
            )
        return value

    @staticmethod
    def _lock_delay(value: Any) -> int:
        """FixupLockDelay: a Go duration string or a number of nanoseconds; below 1000 ns means seconds."""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError("json: cannot unmarshal LockDelay into Go struct field Session.LockDelay")
        nanoseconds = round(parse_go_duration(value) * 1e9) if isinstance(value, str) else int(value)
        if nanoseconds < LOCK_DELAY_MIN_THRESHOLD_NS:
            nanoseconds *= 10**9
        return nanoseconds

    def _catalog_deregister(self, request: _Request) -> _Response:
        """agent/catalog_endpoint.go CatalogDeregister: a JSON body; ``Node`` is required."""
        try:
            decoded = json.loads(request.body or b"null")
        except ValueError as error:
            raise _HTTPError(400, f"Request decode failed: {error}") from None
        node = str((decoded or {}).get("Node") or "") if isinstance(decoded, dict) else ""
        if not node:
            raise _HTTPError(400, "Missing node name")
        self._check_leader()
        self._check_acl(request)
        with self._cond:
            self._reap_locked()
            self._deregister_locked(node)
        return self._json(request, True)

    def _session_id(self, request: _Request, prefix: str) -> str:
        session_id = request.path[len(prefix) :]
        if not session_id:
            raise _HTTPError(400, "Missing session")
        return session_id

    def _session_destroy(self, request: _Request) -> _Response:
        session_id = self._session_id(request, "/v1/session/destroy/")
        self._check_leader()
        self._check_acl(request)
        with self._cond:
            self._reap_locked()
            self._invalidate_locked(session_id)
        return self._json(request, True)

    def _session_renew(self, request: _Request) -> _Response:
        self._read_options(request)
        session_id = self._session_id(request, "/v1/session/renew/")
        self._check_leader()
        self._check_acl(request)
        with self._cond:
            self._reap_locked()
            session = self._sessions.get(session_id)
            if session is None:
                raise _HTTPError(404, f"Session id '{session_id}' not found")
            if session.ttl_seconds > 0:
                session.expires_at = self._clock() + session.ttl_seconds * self.ttl_factor
            return self._json(request, [session.to_json()])

    def _session_info(self, request: _Request) -> _Response:
        options = self._read_options(request)
        session_id = self._session_id(request, "/v1/session/info/")

        def compute() -> tuple[int, _Response]:
            session = self._sessions.get(session_id)
            return self._sessions_index, self._json(request, [session.to_json()] if session else [])

        def watch() -> object:
            session = self._sessions.get(session_id)
            return (session.create_index if session else 0, self._session_gone.get(session_id, 0))

        return self._read(request, options, compute, watch)

    def _session_list(self, request: _Request) -> _Response:
        options = self._read_options(request)

        def compute() -> tuple[int, _Response]:
            sessions = sorted(self._sessions.values(), key=lambda s: (s.create_index, s.id))
            return self._sessions_index, self._json(request, [s.to_json() for s in sessions])

        return self._read(request, options, compute, lambda: self._sessions_index)

    def _session_node(self, request: _Request) -> _Response:
        options = self._read_options(request)
        node = request.path[len("/v1/session/node/") :]
        if not node:
            raise _HTTPError(400, "Missing node name")

        def compute() -> tuple[int, _Response]:
            sessions = sorted(
                (s for s in self._sessions.values() if s.node == node), key=lambda s: (s.create_index, s.id)
            )
            return self._sessions_index, self._json(request, [s.to_json() for s in sessions])

        return self._read(request, options, compute, lambda: self._sessions_index)


# --- CLI -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.consul_double",
        description="Serve a model of Consul's HTTP API (for tests; not Consul) until SIGTERM/SIGINT.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--datacenter", default="dc1")
    parser.add_argument("--node", default="double")
    parser.add_argument("--acl-token", default=None, help="require this token on every request")
    parser.add_argument("--min-ttl", type=float, default=SESSION_TTL_MIN, help="lowest session TTL, seconds")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    double = ConsulDouble(
        args.host,
        args.port,
        datacenter=args.datacenter,
        node=args.node,
        acl_token=args.acl_token,
        min_ttl=args.min_ttl,
    ).start()
    print(double.address, flush=True)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        double.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
