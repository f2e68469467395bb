"""A fault-injecting proxy in front of one real Docker engine, for tests of crash windows.

``DockerProxy`` listens on a unix socket of its own and forwards every HTTP request, byte for byte,
to a real engine's socket (one request per connection: it asks the engine to close after answering,
so a client never reuses a connection the proxy ended). A test points a host's ``docker`` URL at the
proxy and then, for requests it chooses (method and a regular expression on the path):

* ``hold(...)``: the request waits at the proxy until the test releases it (a slow network, a slow
  pull); ``Held.arrived`` tells the test it is there. ``release(forward=False, answer=...)`` answers
  it from the proxy instead of the engine.
* ``drop(...)``: the connection is closed without an answer after the request was read (a network
  failure, or the controller's host dying, at exactly that step). The engine never sees it.
* ``blackhole(...)``: the request is forwarded and the answer's status line and headers come back,
  then nothing more while the connection stays open (a half-open connection).

Everything else is the real engine answering. Loopback and unix sockets only.
"""

from __future__ import annotations

import contextlib
import re
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

_HEADER_END = b"\r\n\r\n"


@dataclass
class Held:
    """A request held at the proxy."""

    arrived: threading.Event = field(default_factory=threading.Event)
    _go: threading.Event = field(default_factory=threading.Event)
    forward: bool = True
    answer: bytes = b""
    requests: list[str] = field(default_factory=list)

    def release(self, *, forward: bool = True, answer: bytes = b"") -> None:
        self.forward, self.answer = forward, answer
        self._go.set()


@dataclass
class _Rule:
    method: str
    pattern: re.Pattern[str]
    action: str  # hold | drop | blackhole
    times: int | None  # None: every matching request
    held: Held | None = None


class DockerProxy:
    def __init__(self, engine_socket: Path, socket_path: Path) -> None:
        self.engine_socket = Path(engine_socket)
        self.socket_path = Path(socket_path)
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self.log: list[tuple[str, str, str]] = []  # (method, path, what the proxy did)
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._open: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    # --- what a test asks -------------------------------------------------------------------------

    def hold(self, method: str, path: str, times: int | None = 1) -> Held:
        held = Held()
        self._add(_Rule(method, re.compile(path), "hold", times, held))
        return held

    def drop(self, method: str, path: str, times: int | None = 1) -> None:
        self._add(_Rule(method, re.compile(path), "drop", times))

    def blackhole(self, method: str, path: str, times: int | None = None) -> None:
        self._add(_Rule(method, re.compile(path), "blackhole", times))

    def clear(self) -> None:
        with self._lock:
            rules, self._rules = self._rules, []
        for rule in rules:
            if rule.held is not None:
                rule.held.release()

    def did(self, method: str, path: str) -> list[str]:
        """What the proxy did with the requests matching (method, path regex), in order."""
        pattern = re.compile(path)
        with self._lock:
            return [what for m, p, what in self.log if m == method and pattern.search(p)]

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def _match(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.method == method and rule.pattern.search(path):
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self._rules.remove(rule)
                    return rule
        return None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> DockerProxy:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        server = socketserver.ThreadingUnixStreamServer(str(self.socket_path), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def __enter__(self) -> DockerProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- one connection, one request --------------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self._open.add(client)
        try:
            request = _read_request(client)
            if request is None:
                return
            method, path, raw = request
            rule = self._match(method, path)
            what = rule.action if rule else "forward"
            with self._lock:
                self.log.append((method, path, what))
            if rule is not None and rule.action == "drop":
                return
            if rule is not None and rule.action == "hold":
                assert rule.held is not None
                rule.held.requests.append(path)
                rule.held.arrived.set()
                rule.held._go.wait()
                if not rule.held.forward:
                    client.sendall(rule.held.answer)
                    return
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as engine:
                engine.connect(str(self.engine_socket))
                engine.sendall(raw)
                if rule is not None and rule.action == "blackhole":
                    head = b""
                    for chunk in _chunks(engine):  # the answer's head goes through, then nothing more
                        if _HEADER_END in head:
                            continue  # dropped: the client's connection stays open, silent
                        head += chunk
                        end = head.find(_HEADER_END)
                        if end >= 0:
                            client.sendall(head[: end + len(_HEADER_END)])
                    threading.Event().wait()
                for chunk in _chunks(engine):
                    client.sendall(chunk)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(client)
            with contextlib.suppress(OSError):
                client.close()


def _chunks(sock: socket.socket) -> Iterator[bytes]:
    while True:
        data = sock.recv(65536)
        if not data:
            return
        yield data


def _read_request(sock: socket.socket) -> tuple[str, str, bytes] | None:
    """One HTTP request as (method, path, bytes to forward with 'Connection: close')."""
    buffer = b""
    while _HEADER_END not in buffer:
        data = sock.recv(65536)
        if not data:
            return None
        buffer += data
    head, _, body = buffer.partition(_HEADER_END)
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = [line for line in lines[1:] if line and not line.lower().startswith("connection:")]
    length = next((int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0)
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            return None
        body += data
    raw = "\r\n".join([lines[0], *headers, "Connection: close"]).encode("latin-1") + _HEADER_END + body
    return method, path, raw
