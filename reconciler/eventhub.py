"""The Docker event streams of every unix:// and tcp:// host on one asyncio loop, in one thread.

A thread per host (reconciler.triggers.EventWatcher) costs a thread, its stack and a docker-py client
per host: at thousands of hosts that is thousands of threads waiting on sockets. Here each host's
stream is a coroutine on one event loop, speaking HTTP/1.1 to the engine's ``/events`` itself, with the
same protocol as EventWatcher:

- the stream is asked for a window at a time (``until`` = now + ``window``), then again from where the
  last one ended (``since``), so no event is missed between windows, and a half-open connection (an
  engine gone without closing it) is noticed: a healthy engine ends each window itself (the chunked
  body's last chunk), and a stream silent for longer than the window plus ``grace`` is taken as lost;
- a lost stream is reconnected with capped exponential backoff, from the base delay again once a
  stream worked, and the first stream after a loss reports ``reconnected`` (what happened while away is
  unknown: the controller looks at the host);
- a window that ends far sooner than asked means the engine's clock is ahead of ours: the next window
  starts from the engine's "now" after half a window, never a hot loop.

The requests are those docker-py's ``events()`` sends (Docker Engine API: ``GET /events`` with
``since``, ``until`` and JSON ``filters``; the body is a stream of JSON objects, one per line, chunked),
on the API version the clients pin (reconciler.engines.API_VERSION). TLS: the host's CA, client
certificate and key, the server's name checked, as docker-py's ``TLSConfig(verify=True)`` does.
ssh:// engines are not served here (docker-py opens an SSH session per client): they keep a thread
each (reconciler.watchers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlencode, urlsplit

from desired_state.spec import Endpoint
from reconciler import labels as L
from reconciler.backoff import Reconnect
from reconciler.engines import API_VERSION

log = logging.getLogger("consul_reconciler.triggers")

WATCHED_EVENTS = ("die", "stop", "kill", "destroy", "oom", "pause")
HEADER_LIMIT = 64 * 1024  # a response head larger than this is not an engine's

OnEvent = Callable[[str, str, Mapping[str, Any]], None]


class StreamError(Exception):
    """The engine answered the events request with something other than a stream of events."""


def served(endpoint: Endpoint) -> bool:
    """Can the hub follow this endpoint's events? (unix:// and tcp://; ssh:// needs its own thread)"""
    return urlsplit(endpoint.url).scheme in ("unix", "tcp", "http", "https")


def tls_context(endpoint: Endpoint) -> ssl.SSLContext | None:
    """The client TLS context of a tcp:// endpoint with TLS files (None: plain TCP). A file named but
    missing raises StreamError naming it (the pass reports the same through its own client)."""
    if not (endpoint.tls_ca or endpoint.tls_cert):
        return None
    for label, path in (
        ("CA", endpoint.tls_ca),
        ("client certificate", endpoint.tls_cert),
        ("client key", endpoint.tls_key),
    ):
        if not path:
            raise StreamError(f"TLS for {endpoint.url} needs a {label} file (tls.ca, tls.cert, tls.key)")
        if not os.path.isfile(path):
            raise StreamError(f"TLS {label} file {path} does not exist")
    context = ssl.create_default_context(cafile=endpoint.tls_ca)
    assert endpoint.tls_cert and endpoint.tls_key
    context.load_cert_chain(endpoint.tls_cert, endpoint.tls_key)
    return context


def events_target(since: float, until: float, cluster: str) -> str:
    """The request target of one window of our cluster's container events."""
    filters = {
        "type": ["container"],
        "label": [f"{L.MANAGED_BY}={cluster}"],
        "event": list(WATCHED_EVENTS),
    }
    query = urlencode({"since": f"{since:.6f}", "until": f"{until:.6f}", "filters": json.dumps(filters)})
    return f"/v{API_VERSION}/events?{query}"


class HubStream:
    """One host's stream on the hub (the hub runs :meth:`run`). ``connected``, ``windows`` and
    ``delay`` read as EventWatcher's."""

    def __init__(
        self,
        host: str,
        endpoint: Endpoint,
        cluster: str,
        on_event: OnEvent,
        *,
        max_delay: float = 30.0,
        window: float = 60.0,
        grace: float = 15.0,
    ) -> None:
        self.host = host
        self.endpoint = endpoint
        self._cluster = cluster
        self._on_event = on_event
        self._backoff = Reconnect(first=0.5, cap=max_delay)
        self._window = window
        self._grace = grace
        self._since: float | None = None  # engine time the next window starts from
        self.connected = threading.Event()
        self.windows = 0  # windows that ended as asked (a healthy stream)
        self.task: asyncio.Task[None] | None = None

    @property
    def delay(self) -> float:
        """The wait before the next reconnection attempt, should the stream fail now."""
        return self._backoff.upcoming

    async def run(self) -> None:
        lost = False  # a stream was lost since the last one that worked: the next one says so
        while True:
            try:
                began = time.monotonic()
                await self._listen(lost)
                self.windows += 1
                lost = False
                self._backoff.reset()
                if time.monotonic() - began < self._window / 2:
                    self._since = None  # the engine's clock is ahead of ours (see the module's doc)
                    await asyncio.sleep(self._window / 2)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the stream: reconnect with backoff
                if self.connected.is_set():
                    self._backoff.reset()  # this stream had worked: start the backoff over
                self.connected.clear()
                lost = True
                log.debug("event stream of %s lost: %s", self.host, _describe(exc))
            await asyncio.sleep(self._backoff.next_delay())

    async def _listen(self, after_loss: bool) -> None:
        now = time.time()
        since = self._since if self._since is not None else now
        self._since = since  # a stream lost in this window is asked for again from its start
        until = now + self._window
        deadline = time.monotonic() + self._window + self._grace
        reader, writer = await asyncio.wait_for(self._open(), timeout=max(1.0, self.endpoint.timeout))
        try:
            writer.write(self._request(events_target(since, until, self._cluster)))
            await writer.drain()
            head = await _within(reader.readuntil(b"\r\n\r\n"), deadline)
            status, headers = _parse_head(head)
            if status != 200:
                body = await _within(reader.read(2048), min(deadline, time.monotonic() + 5))
                raise StreamError(f"GET /events answered {status}: {body.decode(errors='replace')[:200]}")
            self.connected.set()
            if after_loss:
                self._on_event(self.host, "reconnected", {})
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            async for line in _lines(reader, chunked, deadline):
                event = json.loads(line)
                self._on_event(self.host, str(event.get("Action") or event.get("status")), event)
        finally:
            writer.close()
            with contextlib.suppress(Exception):  # closing a dead connection may fail
                await writer.wait_closed()
        self._since = until  # the engine ended the window: the next one starts where it stopped

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parts = urlsplit(self.endpoint.url)
        if parts.scheme == "unix":
            return await asyncio.open_unix_connection(parts.path, limit=HEADER_LIMIT)
        context = tls_context(self.endpoint)
        host, port = parts.hostname or "127.0.0.1", parts.port or (2376 if context else 2375)
        return await asyncio.open_connection(
            host, port, ssl=context, server_hostname=host if context else None, limit=HEADER_LIMIT
        )

    def _request(self, target: str) -> bytes:
        parts = urlsplit(self.endpoint.url)
        authority = "docker" if parts.scheme == "unix" else parts.netloc
        return (
            f"GET {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: consul-reconciler\r\n"
            "Accept: application/json\r\nConnection: close\r\n\r\n"
        ).encode()


async def _within(awaitable: Any, deadline: float) -> Any:
    """``awaitable``, unless the stream's deadline passes first (TimeoutError: the stream is lost)."""
    return await asyncio.wait_for(awaitable, timeout=max(0.0, deadline - time.monotonic()))


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/"):
        raise StreamError(f"not an HTTP response: {lines[0][:80]!r}")
    status = int(rest.split(" ", 1)[0])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _lines(reader: asyncio.StreamReader, chunked: bool, deadline: float) -> Any:
    """The body's lines (one JSON event each), until the body ends: its last chunk, or end of file."""
    pending = b""
    while True:
        if chunked:
            size_line = await _within(reader.readline(), deadline)
            if not size_line:
                raise StreamError("the stream closed inside a chunked body")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                return
            data = (await _within(reader.readexactly(size + 2), deadline))[:-2]
        else:
            data = await _within(reader.read(65536), deadline)
            if not data:
                return
        pending += data
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.strip():
                yield line


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no end of the window within its time (half-open connection?)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


class EventHub:
    """The loop thread and its streams. Thread-safe: :meth:`watch`, :meth:`unwatch`, :meth:`later`
    and :meth:`stop` are called from other threads."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="event-hub", daemon=True)
        self._streams: dict[str, HubStream] = {}
        self._lock = threading.Lock()
        self._started = False

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        # stopped: let the cancelled streams close their connections
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def _ensure_started(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                self._thread.start()

    @property
    def streams(self) -> dict[str, HubStream]:
        with self._lock:
            return dict(self._streams)

    def watch(self, stream: HubStream) -> HubStream:
        """Follow ``stream``'s host (replacing a stream of the same host)."""
        self._ensure_started()
        self.unwatch(stream.host)
        with self._lock:
            self._streams[stream.host] = stream

        def begin() -> None:
            stream.task = self._loop.create_task(stream.run(), name=f"events-{stream.host}")

        self._loop.call_soon_threadsafe(begin)
        return stream

    def unwatch(self, host: str) -> None:
        with self._lock:
            stream = self._streams.pop(host, None)
        if stream is not None:
            self._call(lambda: stream.task.cancel() if stream.task is not None else None)

    def later(self, delay: float, func: Callable[[], None]) -> Callable[[], None]:
        """Call ``func`` on the hub's thread in ``delay`` seconds; returns what cancels it."""
        self._ensure_started()
        handle: Future[asyncio.TimerHandle] = Future()

        def schedule() -> None:
            handle.set_result(self._loop.call_later(delay, func))

        self._loop.call_soon_threadsafe(schedule)

        def cancel() -> None:
            self._call(lambda: handle.result().cancel())

        return cancel

    def _call(self, func: Callable[[], object]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to cancel
            self._loop.call_soon_threadsafe(func)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            started, self._started = self._started, True  # never started after a stop
            self._streams.clear()
        if started and self._thread.is_alive():
            self._call(self._loop.stop)
            self._thread.join(timeout)
