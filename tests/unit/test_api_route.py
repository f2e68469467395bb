"""Docker requests told to the optional request hook, by host and API route (no Docker needed)."""

import http.server
import threading

import pytest

from bench.request_count import RequestCounter
from desired_state.spec import Endpoint
from reconciler.engines import Connections, api_route


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1.41/containers/json", "/containers/json"),
        ("/v1.41/containers/create", "/containers/create"),
        ("/v1.41/containers/3f2a9c/start", "/containers/{id}/start"),
        ("/v1.41/containers/3f2a9c/json", "/containers/{id}/json"),
        ("/v1.41/images/consul-reconciler-standin/consul:1/json", "/images/{name}/json"),
        ("/v1.41/images/busybox:1/json", "/images/{name}/json"),
        ("/v1.41/images/json", "/images/json"),
        ("/v1.41/events", "/events"),
        ("/_ping", "/_ping"),
    ],
)
def test_requests_are_counted_by_route_not_by_container(path: str, route: str) -> None:
    assert api_route(path) == route


class _EmptyEngine(http.server.BaseHTTPRequestHandler):
    """An engine with no containers: every request answers an empty list."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_request_hook_is_told_of_every_request_by_host_and_route() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EmptyEngine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = Endpoint(url=f"tcp://127.0.0.1:{server.server_address[1]}", timeout=5.0)
    counter = RequestCounter()
    counted = Connections(on_request=counter)
    plain = Connections()
    try:
        api = counted.get("h1", endpoint).api
        api.containers(all=True, filters={"label": ["x"]})
        api.containers(all=True, filters={"name": ["^/consul$"]})
        assert counter.total() == 2 and counter.total("h1") == 2 and counter.total("h2") == 0
        assert counter.kinds() == ["GET /containers/json"]
        counter.reset()
        assert counter.total() == 0 and counter.kinds() == []
        assert plain.get("h1", endpoint).api.hooks["response"] == []  # no hook: nothing runs per request
    finally:
        counted.close()
        plain.close()
        server.shutdown()
        server.server_close()
