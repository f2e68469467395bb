"""The controller's HTTP endpoint (reconciler/httpserver.py) under clients that try to tie it up, over
real sockets on loopback."""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from reconciler.httpserver import MAX_CONNECTIONS, MAX_HEAD, StatusServer

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def server() -> Iterator[StatusServer]:
    running = StatusServer(
        "127.0.0.1:0",
        CollectorRegistry(),
        lambda: (True, {}),
        lambda: (True, {}),
        lambda: {"ok": True},
        idle_timeout=1.0,
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


def healthy(server: StatusServer) -> bool:
    with _OPENER.open(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as response:
        return int(response.status) == 200


def test_an_idle_connection_is_closed_by_the_server(server: StatusServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\n")  # and then nothing more
        assert idle.recv(1024) == b""  # closed by the server (a hang would raise TimeoutError here)
    assert healthy(server)


def test_headers_beyond_the_limit_are_refused_before_they_are_read(server: StatusServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        header = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        with contextlib.suppress(OSError):  # the server may close while we still send
            for _ in range(MAX_HEAD // len(header) + 2):
                client.sendall(header)
        answer = client.recv(4096)
    assert answer.startswith(b"HTTP/1.0 431") or answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert healthy(server)


def test_connections_beyond_the_cap_are_closed_and_the_endpoint_recovers() -> None:
    server = StatusServer(
        "127.0.0.1:0", CollectorRegistry(), lambda: (True, {}), lambda: (True, {}), dict, idle_timeout=30.0
    )
    server.start()
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):  # each one a handler thread waiting for its request line
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            held.append(sock)
        closed = False
        deadline = time.monotonic() + 10
        while not closed and time.monotonic() < deadline:  # once all are accepted, the next is closed
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                closed = extra.recv(1024) == b""
        assert closed, "a connection beyond the cap was served"
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 10
        last: object = None
        while time.monotonic() < deadline:
            try:
                if healthy(server):
                    return
            except OSError as error:
                last = error
            time.sleep(0.1)
        raise AssertionError(f"the endpoint did not answer again once the connections were gone: {last!r}")
    finally:
        for sock in held:
            sock.close()
        server.stop()
