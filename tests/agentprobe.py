"""Talking to a Consul agent stand-in over HTTP from the tests (the process or the container)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
T = TypeVar("T")


def call(address: str, path: str, method: str = "GET") -> tuple[int, Any]:
    """(status, decoded JSON body, or the text when it is not JSON, or None when empty)."""
    request = urllib.request.Request(f"http://{address}:8500{path}", method=method)
    try:
        with _OPENER.open(request, timeout=3) as response:
            status, raw = int(response.status), response.read()
    except urllib.error.HTTPError as error:
        status, raw = int(error.code), error.read()
    if not raw:
        return status, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def eventually(
    probe: Callable[[], T], timeout: float = 6.0, what: str = "condition", interval: float = 0.05
) -> T:
    """The first truthy result of ``probe`` (AssertionError, OSError and KeyError count as not yet)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
            if result:
                return result
            last = result
        except (AssertionError, OSError, KeyError) as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s; last: {last!r}")
        time.sleep(interval)
