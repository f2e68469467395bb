"""/healthz, /readyz, /metrics, /status and the console (/ui, reconciler.console) for the controller.

Bound to 127.0.0.1 by default. On any other address a bearer token is required for
everything but /healthz (the controller refuses to start without one there); the console also takes
the session cookie its sign-in form sets from that token.

Limits, so that a client cannot tie it up: a connection idle for ``idle_timeout`` seconds is closed;
a request's line and headers may take ``MAX_HEAD`` bytes in all (431 beyond, before any of it is
looked at); at most ``MAX_CONNECTIONS`` connections are served at once (more are closed at once).
"""

from __future__ import annotations

import contextlib
import hmac
import http.client
import ipaddress
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, BinaryIO

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

if TYPE_CHECKING:
    from reconciler.console.web import Console, Response

log = logging.getLogger("consul_reconciler.http")

Probe = Callable[[], tuple[bool, dict[str, object]]]

MAX_HEAD = 16 * 1024  # request line and headers, in bytes
MAX_BODY = 16 * 1024  # a form posted to the console (sign-in, Resume)
MAX_CONNECTIONS = 64
IDLE_TIMEOUT = 10.0  # seconds


class _HeadLimit:
    """The request's stream, refusing to give more than ``limit`` bytes of request line and headers."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self._stream, self._left = stream, limit

    def readline(self, size: int = -1) -> bytes:
        line = self._stream.readline(self._left + 1 if size < 0 else min(size, self._left + 1))
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong(f"request line and headers over {MAX_HEAD} bytes")
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: this one is closed unanswered
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is not ADDRESS:PORT (e.g. 127.0.0.1:9321)")
    return host.strip("[]") or "127.0.0.1", int(port)


class StatusServer:
    def __init__(
        self,
        address: str,
        registry: CollectorRegistry,
        healthz: Probe,
        readyz: Probe,
        status: Callable[[], dict[str, object]],
        token: str | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        console: Console | None = None,
    ) -> None:
        host, port = parse_address(address)
        if not is_loopback(host) and not token:
            raise ValueError(
                f"the HTTP endpoint on non-loopback address {host} needs a bearer token "
                "(--http-token-file or CONSUL_RECONCILER_HTTP_TOKEN)"
            )
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = idle_timeout  # on the socket: an idle or slow client is dropped

            def setup(self) -> None:
                super().setup()
                self._head = _HeadLimit(self.rfile, MAX_HEAD)  # type: ignore[arg-type]
                self.rfile = self._head  # type: ignore[assignment]

            def handle_one_request(self) -> None:
                self._head._left = MAX_HEAD  # each request on the connection gets its own budget
                super().handle_one_request()  # a timed-out read closes the connection (http.server)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("http %s", format % args)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if console is not None and (path == "/ui" or path.startswith("/ui/")):
                    self._console("GET", b"")
                    return
                if path != "/healthz" and not server._authorized(self.headers.get("Authorization")):
                    self._send(401, b'{"error": "a bearer token is required"}\n', "application/json")
                    return
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, detail = (healthz if path == "/healthz" else readyz)()
                    body = json.dumps({"ok": ok, **detail}, default=str).encode() + b"\n"
                    self._send(200 if ok else 503, body, "application/json")
                elif path == "/status":
                    self._send(200, json.dumps(status(), default=str).encode() + b"\n", "application/json")
                else:
                    self._send(404, b'{"error": "not found"}\n', "application/json")

            def do_POST(self) -> None:
                path = self.path.split("?", 1)[0]
                if console is None or not (path == "/ui" or path.startswith("/ui/")):
                    self._send(405, b'{"error": "only the console takes POST"}\n', "application/json")
                    return
                length = self.headers.get("Content-Length", "0")
                if not length.isdigit() or int(length) > MAX_BODY:
                    self._send(413, f"a form of at most {MAX_BODY} bytes\n".encode(), "text/plain")
                    return
                self._console("POST", self.rfile.read(int(length)))

            def _console(self, method: str, body: bytes) -> None:
                from reconciler.console.web import Request

                assert console is not None
                bearer = server._token is not None and server._authorized(self.headers.get("Authorization"))
                request = Request.parse(
                    method,
                    self.path,
                    dict(self.headers.items()),
                    body,
                    bearer=bearer,
                    client=self.client_address[0],
                )
                try:
                    answer = console.handle(request)
                except Exception:
                    log.exception("the console failed on %s %s", method, self.path)
                    self._send(500, b"the console failed; see the controller's log\n", "text/plain")
                    return
                try:
                    self._answer(answer)
                finally:
                    if answer.done is not None:
                        answer.done()

            def _answer(self, answer: Response) -> None:
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                for name, value in answer.headers:
                    self.send_header(name, value)
                if answer.stream is None:
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                    return
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True

                def write(chunk: bytes) -> None:
                    self.wfile.write(chunk)
                    self.wfile.flush()

                with contextlib.suppress(OSError):  # the page went away (a broken pipe, a reset)
                    answer.stream(write)

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._token = token
        self._httpd = _Server((host, port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def _authorized(self, header: str | None) -> bool:
        if not self._token:
            return True
        expected = f"Bearer {self._token}"
        return header is not None and hmac.compare_digest(header.encode(), expected.encode())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
