"""Docker request paths grouped into API routes for the request counters (no Docker needed)."""

import pytest

from reconciler.engines import api_route


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
