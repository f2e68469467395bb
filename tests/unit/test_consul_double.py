"""The Consul HTTP API double (testbed/consul_double.py), checked over real HTTP: raw HTTP for exact status
codes, bodies and headers, py-consul for the paths the product uses."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import consul
import pytest
import requests

from testbed.consul_double import ConsulDouble, format_go_duration, parse_go_duration

REPO = Path(__file__).resolve().parents[2]


def no_jitter(wait: float) -> float:
    return 0.0


class ManualClock:
    """A clock the test moves by hand (the double's TTLs and lock-delays follow it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Raw:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def index(self) -> int:
        return int(self.headers["X-Consul-Index"])


def raw(
    double: ConsulDouble,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Raw:
    connection = http.client.HTTPConnection("127.0.0.1", double.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Raw(response.status, response.headers, response.read())
    finally:
        connection.close()


def in_thread(func: Callable[[], Any]) -> Callable[[], Any]:
    """Run func in a thread; the returned callable joins it and gives its result (or raises its error)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = func()
        except BaseException as error:  # handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> Any:
        thread.join(timeout=10)
        assert not thread.is_alive(), "the request did not finish"
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return join


def create_session(double: ConsulDouble, **fields: Any) -> str:
    response = raw(double, "PUT", "/v1/session/create", json.dumps(fields).encode() if fields else None)
    assert response.status == 200, response.body
    return str(response.json()["ID"])


@pytest.fixture
def double() -> Iterator[ConsulDouble]:
    with ConsulDouble(min_ttl=1.0, jitter=no_jitter) as running:
        yield running


@pytest.fixture
def client(double: ConsulDouble) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=double.port)


# --- index and headers -----------------------------------------------------------------------------


def test_reads_carry_the_consul_headers_and_a_missing_key_is_an_empty_404(
    double: ConsulDouble, client: consul.Consul
) -> None:
    response = raw(double, "GET", "/v1/kv/missing")
    assert response.status == 404
    assert response.body == b""
    assert response.index == 1  # a KV table never written: Consul answers 1, never 0
    assert response.headers["X-Consul-KnownLeader"] == "true"
    assert response.headers["X-Consul-LastContact"] == "0"
    assert response.headers["X-Consul-Effective-Consistency"] == "leader"
    index, data = client.kv.get("missing")
    assert (index, data) == ("1", None)  # py-consul: the index is the header's string


def test_one_index_above_zero_moves_only_on_writes_that_change_something(
    double: ConsulDouble, client: consul.Consul
) -> None:
    start = double.index
    assert start > 0
    assert client.kv.put("k", b"v")
    assert double.index == start + 1
    assert client.kv.put("k", b"v")  # the same value and flags: nothing changes
    assert double.index == start + 1
    assert client.kv.put("k", b"v", flags=3)
    assert double.index == start + 2
    assert client.kv.delete("missing")  # nothing to delete
    assert double.index == start + 2
    session = client.session.create(lock_delay=0)
    assert double.index == start + 3
    client.session.renew(session)  # not a raft write in Consul either
    assert double.index == start + 3
    assert client.kv.put("lock", b"", acquire=session)
    assert client.kv.put("lock", b"", release=session)
    assert double.index == start + 5
    assert client.session.destroy(session)
    assert client.session.destroy(session)  # idempotent, and the second changes nothing
    assert double.index == start + 6
    assert client.kv.delete("k")
    assert double.index == start + 7
    listing = raw(double, "GET", "/v1/session/list")
    assert listing.index == start + 6  # the sessions table index


# --- KV GET ----------------------------------------------------------------------------------------


def test_a_kv_entry_is_consuls_json_and_its_index_is_its_modify_index(
    double: ConsulDouble, client: consul.Consul
) -> None:
    put = raw(double, "PUT", "/v1/kv/cfg/app?flags=42", body=b"\x00\xffbin")
    assert (put.status, put.body) == (200, b"true")
    assert put.headers["Content-Type"] == "application/json"
    client.kv.put("cfg/other", b"later")  # moves the KV table index past cfg/app's ModifyIndex
    response = raw(double, "GET", "/v1/kv/cfg/app")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    [entry] = response.json()
    assert list(entry) == ["LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"]
    assert entry["Key"] == "cfg/app" and entry["Flags"] == 42 and entry["LockIndex"] == 0
    assert base64.b64decode(entry["Value"]) == b"\x00\xffbin"
    assert entry["CreateIndex"] == entry["ModifyIndex"]
    assert response.index == entry["ModifyIndex"] < double.index
    index, data = client.kv.get("cfg/app")
    assert int(index) == entry["ModifyIndex"]
    assert data["Value"] == b"\x00\xffbin"  # py-consul decodes base64 to bytes
    missing = raw(double, "GET", "/v1/kv/cfg/nothing")
    assert missing.index == double.index  # a missing key: the KV table index
    assert double.kv_get("cfg/app") == {**entry, "Value": b"\x00\xffbin"}


def test_an_empty_body_stores_a_nil_value(double: ConsulDouble, client: consul.Consul) -> None:
    assert raw(double, "PUT", "/v1/kv/empty").body == b"true"
    assert raw(double, "GET", "/v1/kv/empty").json()[0]["Value"] is None
    assert client.kv.put("also-empty", None)
    assert client.kv.get("also-empty")[1]["Value"] is None
    raw_value = raw(double, "GET", "/v1/kv/empty?raw")
    assert (raw_value.status, raw_value.body) == (200, b"")


def test_recurse_lists_the_prefix_sorted_with_the_highest_index_under_it(
    double: ConsulDouble, client: consul.Consul
) -> None:
    for key in ("a/3", "a/1", "b/1", "a/2"):
        client.kv.put(key, key.encode())
    highest_a = double.index
    client.kv.put("ab", b"outside the prefix a/")
    response = raw(double, "GET", "/v1/kv/a/?recurse")
    assert [e["Key"] for e in response.json()] == ["a/1", "a/2", "a/3"]
    assert response.index == highest_a
    client.kv.delete("a/1")
    assert raw(double, "GET", "/v1/kv/a/?recurse").index == double.index  # the tombstone counts
    index, entries = client.kv.get("a/", recurse=True)
    assert [e["Value"] for e in entries] == [b"a/2", b"a/3"]
    assert int(index) == double.index
    everything = raw(double, "GET", "/v1/kv/?recurse")
    assert [e["Key"] for e in everything.json()] == ["a/2", "a/3", "ab", "b/1"]
    nothing = raw(double, "GET", "/v1/kv/zzz/?recurse")
    assert (nothing.status, nothing.body, nothing.index) == (404, b"", double.index)


def test_keys_with_a_separator_roll_up_like_consul(double: ConsulDouble, client: consul.Consul) -> None:
    for key in ("web/a", "web/b/c", "web/b/d", "web/e/f", "webx", "other"):
        client.kv.put(key, b"")
    assert raw(double, "GET", "/v1/kv/web?keys").json() == ["web/a", "web/b/c", "web/b/d", "web/e/f", "webx"]
    assert raw(double, "GET", "/v1/kv/web/?keys&separator=/").json() == ["web/a", "web/b/", "web/e/"]
    assert raw(double, "GET", "/v1/kv/?keys&separator=/").json() == ["other", "web/", "webx"]
    assert client.kv.get("web/", keys=True, separator="/")[1] == ["web/a", "web/b/", "web/e/"]
    missing = raw(double, "GET", "/v1/kv/nope/?keys")
    assert (missing.status, missing.body) == (404, b"")
    client.kv.delete("", recurse=True)
    root = raw(double, "GET", "/v1/kv/?keys")
    assert (root.status, root.json()) == (200, [])  # the root is never a 404, like Consul


def test_raw_answers_the_value_bytes(double: ConsulDouble) -> None:
    raw(double, "PUT", "/v1/kv/blob", body=b"\x01\x02 not json")
    response = raw(double, "GET", "/v1/kv/blob?raw")
    assert (response.status, response.body) == (200, b"\x01\x02 not json")
    assert response.headers["Content-Type"] == "text/plain"
    assert response.index == double.index


def test_a_get_without_a_key_is_a_400(double: ConsulDouble) -> None:
    response = raw(double, "GET", "/v1/kv/")
    assert (response.status, response.body) == (400, b"Missing key name")


# --- KV PUT ----------------------------------------------------------------------------------------


def test_put_answers_a_bare_true_or_false_and_cas_guards_it(
    double: ConsulDouble, client: consul.Consul
) -> None:
    assert raw(double, "PUT", "/v1/kv/c?cas=0", body=b"1").body == b"true"  # create only if absent
    assert raw(double, "PUT", "/v1/kv/c?cas=0", body=b"2").body == b"false"
    modify = double.kv_get("c")["ModifyIndex"]  # type: ignore[index]
    assert raw(double, "PUT", f"/v1/kv/c?cas={modify + 100}", body=b"3").body == b"false"
    assert raw(double, "PUT", f"/v1/kv/c?cas={modify}", body=b"4").body == b"true"
    assert raw(double, "PUT", "/v1/kv/absent?cas=5", body=b"x").body == b"false"
    assert double.kv_get("c")["Value"] == b"4"  # type: ignore[index]
    _, entry = client.kv.get("c")
    assert client.kv.put("c", "5", cas=entry["ModifyIndex"]) is True
    assert client.kv.put("c", "6", cas=entry["ModifyIndex"]) is False
    assert client.kv.put("new", "v", cas=0) is True
    assert client.kv.get("c")[1]["Value"] == b"5"


def test_flags_are_stored_and_a_put_without_flags_resets_them(
    double: ConsulDouble, client: consul.Consul
) -> None:
    assert client.kv.put("f", "v", flags=7)
    assert client.kv.get("f")[1]["Flags"] == 7
    assert client.kv.put("f", "v")
    assert client.kv.get("f")[1]["Flags"] == 0
    bad = raw(double, "PUT", "/v1/kv/f?flags=x", body=b"v")
    assert (bad.status, bad.body) == (500, b'strconv.ParseUint: parsing "x": invalid syntax')


def test_conflicting_flags_are_a_400(double: ConsulDouble, client: consul.Consul) -> None:
    response = raw(double, "PUT", "/v1/kv/k?cas=0&acquire=abc", body=b"v")
    assert (response.status, response.body) == (400, b"Conflicting flags: acquire=abc&cas=0\n")
    response = raw(double, "DELETE", "/v1/kv/k?recurse&cas=3")
    assert (response.status, response.body) == (400, b"Conflicting flags: cas=3&recurse=\n")
    with pytest.raises(consul.ConsulException, match="Conflicting flags"):
        client.kv.put("k", "v", cas=0, release="abc")


def test_a_put_that_changes_nothing_keeps_the_modify_index(double: ConsulDouble) -> None:
    raw(double, "PUT", "/v1/kv/same?flags=1", body=b"v")
    first = raw(double, "GET", "/v1/kv/same")
    raw(double, "PUT", "/v1/kv/same?flags=1", body=b"v")
    second = raw(double, "GET", "/v1/kv/same")
    assert second.json() == first.json()
    assert second.index == first.index


def test_a_value_over_512_kib_is_a_413(double: ConsulDouble) -> None:
    response = raw(double, "PUT", "/v1/kv/big", body=b"x" * (512 * 1024 + 1))
    assert response.status == 413
    assert response.body.startswith(b"Request body(524289 bytes) too large, max size: 524288 bytes.")


# --- locks -----------------------------------------------------------------------------------------


def test_acquire_and_release(double: ConsulDouble, client: consul.Consul) -> None:
    one = client.session.create(name="one", lock_delay=0)
    two = create_session(double, Name="two", LockDelay="0s")
    assert raw(double, "PUT", f"/v1/kv/lock?acquire={one}", body=b"first").body == b"true"
    entry = raw(double, "GET", "/v1/kv/lock").json()[0]
    assert list(entry) == ["LockIndex", "Key", "Flags", "Value", "Session", "CreateIndex", "ModifyIndex"]
    assert (entry["Session"], entry["LockIndex"], base64.b64decode(entry["Value"])) == (one, 1, b"first")
    assert client.kv.put("lock", b"again", acquire=one) is True  # held by the same session: no new lock
    assert client.kv.get("lock")[1]["LockIndex"] == 1
    assert client.kv.put("lock", b"theirs", acquire=two) is False
    assert client.kv.put("lock", b"", release=two) is False
    assert client.kv.get("lock")[1]["Value"] == b"again"
    assert client.kv.put("lock", b"released", release=one) is True
    _, entry = client.kv.get("lock")
    assert "Session" not in entry and entry["LockIndex"] == 1 and entry["Value"] == b"released"
    assert client.kv.put("lock", b"mine", acquire=two) is True
    assert client.kv.get("lock")[1]["LockIndex"] == 2
    assert client.kv.put("never-written", b"", release=one) is False


def test_acquire_with_a_session_that_does_not_exist_is_a_500(
    double: ConsulDouble, client: consul.Consul
) -> None:
    response = raw(double, "PUT", "/v1/kv/lock?acquire=nope", body=b"v")
    assert (response.status, response.body) == (500, b'invalid session "nope"')
    with pytest.raises(consul.ConsulException, match="invalid session"):
        client.kv.put("lock", "v", acquire="8a7e7e2c-1d55-4b7e-9d5c-2f3c9c1b1f00")
    assert double.kv_get("lock") is None


def test_a_plain_put_keeps_the_lock_holder_but_writes_lock_index_0_like_consul(
    double: ConsulDouble, client: consul.Consul
) -> None:
    session = client.session.create(lock_delay=0)
    assert client.kv.put("lock", b"v", acquire=session)
    assert client.kv.put("lock", b"plain")
    _, entry = client.kv.get("lock")
    assert (entry["Session"], entry["LockIndex"], entry["Value"]) == (session, 0, b"plain")


def test_destroying_a_session_releases_its_locks_and_starts_the_lock_delay() -> None:
    clock = ManualClock()
    with ConsulDouble(clock=clock, jitter=no_jitter) as double:
        client = consul.Consul(host="127.0.0.1", port=double.port)
        holder = create_session(double, LockDelay="2s")
        other = create_session(double)
        assert client.kv.put("lock", b"v", acquire=holder)
        assert client.session.destroy(holder)
        _, entry = client.kv.get("lock")
        assert "Session" not in entry and entry["ModifyIndex"] == double.index
        assert client.kv.put("lock", b"v", acquire=other) is False  # lock-delay
        clock.advance(1.9)
        assert client.kv.put("lock", b"v", acquire=other) is False
        clock.advance(0.2)
        assert client.kv.put("lock", b"v", acquire=other) is True


# --- KV DELETE -------------------------------------------------------------------------------------


def test_delete_plain_recursive_and_cas(double: ConsulDouble, client: consul.Consul) -> None:
    for key in ("d/1", "d/2", "d/sub/3", "keep"):
        client.kv.put(key, b"v")
    assert raw(double, "DELETE", "/v1/kv/d/1").body == b"true"
    assert raw(double, "DELETE", "/v1/kv/d/1").body == b"true"  # already gone: still true
    assert raw(double, "DELETE", "/v1/kv/d/?recurse").body == b"true"
    assert raw(double, "GET", "/v1/kv/?keys").json() == ["keep"]
    modify = double.kv_get("keep")["ModifyIndex"]  # type: ignore[index]
    assert raw(double, "DELETE", f"/v1/kv/keep?cas={modify + 1}").body == b"false"
    assert double.kv_get("keep") is not None
    assert raw(double, "DELETE", f"/v1/kv/keep?cas={modify}").body == b"true"
    assert double.kv_get("keep") is None
    assert raw(double, "DELETE", "/v1/kv/keep?cas=5").body == b"true"  # a missing key: true, like Consul
    client.kv.put("x", b"v")
    assert client.kv.delete("x", cas=1) is False
    assert client.kv.delete("x", cas=client.kv.get("x")[1]["ModifyIndex"]) is True
    assert raw(double, "DELETE", "/v1/kv/").status == 400


# --- blocking queries ------------------------------------------------------------------------------


def test_a_blocking_get_returns_when_another_thread_writes(
    double: ConsulDouble, client: consul.Consul
) -> None:
    client.kv.put("watched", b"old")
    index, _ = client.kv.get("watched")
    writer = consul.Consul(host="127.0.0.1", port=double.port)
    timer = threading.Timer(0.15, lambda: writer.kv.put("watched", b"new"))
    timer.start()
    started = time.monotonic()
    new_index, entry = client.kv.get("watched", index=index, wait="5s")
    elapsed = time.monotonic() - started
    timer.join()
    assert 0.1 < elapsed < 2.0
    assert int(new_index) > int(index) and entry["Value"] == b"new"


def test_a_blocking_get_answers_after_the_wait_with_the_same_index(
    double: ConsulDouble, client: consul.Consul
) -> None:
    client.kv.put("quiet", b"v")
    index, entry = client.kv.get("quiet")
    started = time.monotonic()
    again, same = client.kv.get("quiet", index=index, wait="200ms")
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.5
    assert (again, same) == (index, entry)


def test_a_blocking_get_of_one_key_ignores_writes_to_other_keys(double: ConsulDouble) -> None:
    raw(double, "PUT", "/v1/kv/mine", body=b"v")
    index = raw(double, "GET", "/v1/kv/mine").index
    started = time.monotonic()
    waiting = in_thread(lambda: raw(double, "GET", f"/v1/kv/mine?index={index}&wait=300ms"))
    time.sleep(0.05)
    raw(double, "PUT", "/v1/kv/someone-elses", body=b"v")
    response = waiting()
    assert time.monotonic() - started >= 0.3
    assert (response.status, response.index) == (200, index)


def test_a_blocking_get_wakes_when_the_key_appears_or_the_prefix_loses_a_key(double: ConsulDouble) -> None:
    missing = raw(double, "GET", "/v1/kv/later")
    waiting = in_thread(lambda: raw(double, "GET", f"/v1/kv/later?index={missing.index}&wait=5s"))
    time.sleep(0.05)
    raw(double, "PUT", "/v1/kv/later", body=b"here")
    response = waiting()
    assert response.status == 200 and response.index > missing.index
    listing = raw(double, "GET", "/v1/kv/?recurse")
    waiting = in_thread(lambda: raw(double, "GET", f"/v1/kv/?recurse&index={listing.index}&wait=5s"))
    time.sleep(0.05)
    raw(double, "DELETE", "/v1/kv/later")
    response = waiting()
    assert (response.status, response.index) == (404, double.index)


def test_blocking_sessions_list_and_info(double: ConsulDouble, client: consul.Consul) -> None:
    index, sessions = client.session.list()
    assert sessions == []
    waiting = in_thread(lambda: client.session.list(index=index, wait="5s"))
    time.sleep(0.05)
    session = client.session.create(name="watched")
    new_index, sessions = waiting()
    assert int(new_index) > int(index) and [s["ID"] for s in sessions] == [session]
    info_index, info = client.session.info(session)
    assert info["Name"] == "watched"
    waiting = in_thread(lambda: client.session.info(session, index=info_index, wait="5s"))
    time.sleep(0.05)
    client.session.destroy(session)
    gone_index, gone = waiting()
    assert int(gone_index) > int(info_index) and gone is None


def test_an_invalid_index_or_wait_is_a_400(double: ConsulDouble) -> None:
    for query, message in (
        ("index=abc", b"Invalid index"),
        ("index=-1", b"Invalid index"),
        ("index=18446744073709551616", b"Invalid index"),
        ("index=1&wait=10", b"Invalid wait time"),
        ("index=1&wait=5x", b"Invalid wait time"),
    ):
        for path in ("/v1/kv/k", "/v1/session/list"):
            response = raw(double, "GET", f"{path}?{query}")
            assert (response.status, response.body) == (400, message), (path, query)


def test_wait_defaults_to_5_minutes_is_capped_at_10_and_gets_the_jitter() -> None:
    asked: list[float] = []

    def recording_jitter(wait: float) -> float:
        asked.append(wait)
        return 0.2

    with ConsulDouble(jitter=recording_jitter) as double:

        def blocked_until_a_write(query: str) -> int:
            index = raw(double, "GET", "/v1/kv/k").index
            waiting = in_thread(lambda: raw(double, "GET", f"/v1/kv/k?index={index}&{query}"))
            time.sleep(0.05)
            raw(double, "PUT", "/v1/kv/k", body=query.encode())
            return int(waiting().index)

        for query in ("wait=20m", "", "wait=0s"):
            blocked_until_a_write(query)
        assert asked == [600.0, 300.0, 300.0]
        index = raw(double, "GET", "/v1/kv/k").index
        started = time.monotonic()
        raw(double, "GET", f"/v1/kv/k?index={index}&wait=100ms")
        assert time.monotonic() - started >= 0.3  # 100 ms + the injected 200 ms of jitter
        assert asked[-1] == pytest.approx(0.1)


def test_go_durations() -> None:
    assert parse_go_duration("10s") == 10
    assert parse_go_duration("1m") == 60
    assert parse_go_duration("500ms") == pytest.approx(0.5)
    assert parse_go_duration("1m30s") == 90
    assert parse_go_duration("1.5h") == 5400
    assert parse_go_duration("0") == 0
    assert parse_go_duration("-2s") == -2
    for bad in ("10", "abc", "", "5x", "1m30"):
        with pytest.raises(ValueError):
            parse_go_duration(bad)
    assert [format_go_duration(s) for s in (10, 86400, 0.5, 90, 1.5, 0)] == [
        "10s",
        "24h0m0s",
        "500ms",
        "1m30s",
        "1.5s",
        "0s",
    ]


def test_an_index_ahead_of_the_server_blocks_like_consul_unless_told_otherwise() -> None:
    with ConsulDouble(jitter=no_jitter) as consul_like:
        ahead = consul_like.index + 1000
        started = time.monotonic()
        response = raw(consul_like, "GET", f"/v1/kv/k?index={ahead}&wait=200ms")
        assert time.monotonic() - started >= 0.2
        assert response.status == 404 and response.index < ahead
    with ConsulDouble(jitter=no_jitter, block_on_future_index=False) as eager:
        started = time.monotonic()
        response = raw(eager, "GET", f"/v1/kv/k?index={eager.index + 1000}&wait=5s")
        assert time.monotonic() - started < 1.0
        assert response.status == 404


# --- sessions --------------------------------------------------------------------------------------


def test_session_create_with_an_empty_body_takes_consuls_defaults(double: ConsulDouble) -> None:
    response = raw(double, "PUT", "/v1/session/create")
    assert response.status == 200
    assert list(response.json()) == ["ID"]
    session = response.json()["ID"]
    info = raw(double, "GET", f"/v1/session/info/{session}")
    assert info.json() == [
        {
            "ID": session,
            "Name": "",
            "Node": "double",
            "LockDelay": 15_000_000_000,
            "Behavior": "release",
            "TTL": "",
            "NodeChecks": ["serfHealth"],
            "ServiceChecks": None,
            "CreateIndex": info.index,
            "ModifyIndex": info.index,
        }
    ]


def test_session_fields_are_case_insensitive_and_lock_delay_takes_numbers(double: ConsulDouble) -> None:
    session = create_session(double, name="n", TTL="2s", lockdelay="1500ms", BEHAVIOR="delete", checks=[])
    [info] = raw(double, "GET", f"/v1/session/info/{session}").json()
    assert (info["Name"], info["TTL"], info["LockDelay"], info["Behavior"], info["NodeChecks"]) == (
        "n",
        "2s",
        1_500_000_000,
        "delete",
        [],
    )
    for given, nanoseconds in ((5, 5_000_000_000), (2_000_000_000, 2_000_000_000), ("0s", 0)):
        session = create_session(double, LockDelay=given)
        assert raw(double, "GET", f"/v1/session/info/{session}").json()[0]["LockDelay"] == nanoseconds


def test_session_create_errors_are_consuls() -> None:
    with ConsulDouble() as double:  # Consul's 10 s floor
        for body, status, text in (
            ({"TTL": "5s"}, 500, b"Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"),
            ({"TTL": "86401s"}, 500, b"Invalid Session TTL '86401000000000', must be between [10s=24h0m0s]"),
            ({"TTL": "abc"}, 500, b"Session TTL 'abc' invalid: time: invalid duration \"abc\""),
            ({"Behavior": "keep"}, 500, b"Invalid Behavior setting 'keep'"),
            ({"Node": "ghost"}, 500, b"Missing node registration"),
        ):
            response = raw(double, "PUT", "/v1/session/create", json.dumps(body).encode())
            assert (response.status, response.body) == (status, text)
        assert raw(double, "PUT", "/v1/session/create", b"{").status == 400
        assert raw(double, "PUT", "/v1/session/create", json.dumps({"TTL": "0s"}).encode()).status == 200
        client = consul.Consul(host="127.0.0.1", port=double.port)
        assert client.session.create(ttl=10)
    with ConsulDouble(min_ttl=1.0) as double:  # the test knob
        response = raw(double, "PUT", "/v1/session/create", json.dumps({"TTL": "500ms"}).encode())
        assert response.body == b"Invalid Session TTL '500000000', must be between [1s=24h0m0s]"
        assert raw(double, "PUT", "/v1/session/create", json.dumps({"TTL": "1s"}).encode()).status == 200


def test_session_renew_destroy_info_and_list(double: ConsulDouble, client: consul.Consul) -> None:
    session = client.session.create(name="worker", ttl=10, lock_delay=0)
    renewed = client.session.renew(session)
    assert (renewed["ID"], renewed["TTL"], renewed["LockDelay"]) == (session, "10s", 0)
    assert client.session.info(session)[1]["Name"] == "worker"
    assert [s["ID"] for s in client.session.list()[1]] == [session]
    assert [s["ID"] for s in client.session.node("double")[1]] == [session]
    assert client.session.destroy(session) is True
    assert client.session.destroy(session) is True
    with pytest.raises(consul.NotFound):
        client.session.renew(session)
    assert client.session.info(session)[1] is None
    renew = raw(double, "PUT", f"/v1/session/renew/{session}")
    assert (renew.status, renew.body) == (404, f"Session id '{session}' not found".encode())
    info = raw(double, "GET", f"/v1/session/info/{session}")
    assert (info.status, info.body) == (200, b"[]")
    assert raw(double, "GET", "/v1/session/list").body == b"[]"
    assert raw(double, "PUT", f"/v1/session/destroy/{session}").body == b"true"
    assert raw(double, "PUT", "/v1/session/destroy/").status == 400


def test_a_session_expires_at_twice_its_ttl_and_renew_restarts_the_clock() -> None:
    clock = ManualClock()
    with ConsulDouble(clock=clock, min_ttl=1.0) as double:
        session = create_session(double, TTL="1s")
        clock.advance(1.99)
        # Consul never expires a session before its TTL; it may (and here does) wait 2 x TTL
        assert raw(double, "GET", f"/v1/session/info/{session}").body != b"[]"
        clock.advance(0.02)
        assert raw(double, "GET", f"/v1/session/info/{session}").body == b"[]"
        session = create_session(double, TTL="1s")
        clock.advance(1.5)
        assert raw(double, "PUT", f"/v1/session/renew/{session}").status == 200
        clock.advance(1.9)
        assert raw(double, "PUT", f"/v1/session/renew/{session}").status == 200
        clock.advance(2.01)
        assert raw(double, "PUT", f"/v1/session/renew/{session}").status == 404
    with ConsulDouble(clock=clock, min_ttl=1.0, ttl_factor=1.0) as double:
        session = create_session(double, TTL="1s")
        clock.advance(1.01)
        assert session not in double.session_ids()


def test_expiry_releases_or_deletes_the_keys_held_and_starts_their_lock_delay() -> None:
    clock = ManualClock()
    with ConsulDouble(clock=clock, min_ttl=1.0) as double:
        client = consul.Consul(host="127.0.0.1", port=double.port)
        releasing = create_session(double, TTL="1s", LockDelay="5s")
        deleting = create_session(double, TTL="1s", Behavior="delete", LockDelay="0s")
        assert client.kv.put("held/release", b"r", acquire=releasing)
        assert client.kv.put("held/delete", b"d", acquire=deleting)
        before = double.index
        clock.advance(2.5)
        after = raw(double, "GET", "/v1/kv/held/?recurse")
        [entry] = after.json()
        assert (entry["Key"], entry["LockIndex"], "Session" in entry) == ("held/release", 1, False)
        assert entry["ModifyIndex"] > before and after.index == double.index
        newcomer = create_session(double)
        assert client.kv.put("held/delete", b"again", acquire=newcomer) is True  # no lock-delay (0s)
        assert client.kv.put("held/release", b"mine", acquire=newcomer) is False  # 5 s lock-delay
        clock.advance(5.1)
        assert client.kv.put("held/release", b"mine", acquire=newcomer) is True


def test_the_reaper_thread_expires_sessions_with_no_request_coming() -> None:
    clock = ManualClock()
    with ConsulDouble(clock=clock, min_ttl=1.0, tick=0.01) as double:
        create_session(double, TTL="1s")
        before = double.index
        clock.advance(3)
        deadline = time.monotonic() + 2
        while double.index == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert double.index == before + 1
        assert double.requests() == [("PUT", "/v1/session/create")]


# --- status, agent, routing, ACL -------------------------------------------------------------------


def test_status_leader_and_peers(double: ConsulDouble, client: consul.Consul) -> None:
    leader = raw(double, "GET", "/v1/status/leader")
    assert (leader.status, leader.body) == (200, b'"127.0.0.1:8300"')
    assert "X-Consul-Index" not in leader.headers  # Consul sets no query meta on /v1/status
    assert raw(double, "GET", "/v1/status/peers").body == b'["127.0.0.1:8300"]'
    assert client.status.leader() == "127.0.0.1:8300"
    assert client.status.peers() == ["127.0.0.1:8300"]


def test_agent_self(double: ConsulDouble, client: consul.Consul) -> None:
    agent = client.agent.self()
    assert (agent["Config"]["Datacenter"], agent["Config"]["NodeName"]) == ("dc1", "double")
    assert agent["Member"]["Name"] == "double"


def test_unknown_paths_are_404_and_wrong_methods_405(double: ConsulDouble) -> None:
    assert raw(double, "GET", "/v1/catalog/services").status == 404
    response = raw(double, "POST", "/v1/kv/k", body=b"v")
    assert (response.status, response.body, response.headers["Allow"]) == (
        405,
        b"method POST not allowed",
        "GET,PUT,DELETE",
    )
    assert raw(double, "GET", "/v1/session/create").status == 405


def test_another_datacenter_is_out_of_reach(double: ConsulDouble) -> None:
    response = raw(double, "GET", "/v1/kv/k?dc=dc2")
    assert (response.status, response.body) == (500, b"No path to datacenter")
    assert raw(double, "GET", "/v1/kv/k?dc=dc1").status == 404
    assert raw(double, "GET", "/v1/kv/k?stale&consistent").status == 400


def test_an_acl_token_is_required_when_set() -> None:
    with ConsulDouble(acl_token="s3cret") as double:
        assert raw(double, "GET", "/v1/kv/k").body == b"Permission denied"
        assert raw(double, "GET", "/v1/kv/k").status == 403
        wrong = raw(double, "GET", "/v1/kv/k", headers={"X-Consul-Token": "guess"})
        assert (wrong.status, wrong.body) == (403, b"ACL not found")
        assert raw(double, "GET", "/v1/kv/k", headers={"X-Consul-Token": "s3cret"}).status == 404
        assert raw(double, "GET", "/v1/kv/k?token=s3cret").status == 404
        assert raw(double, "GET", "/v1/kv/k", headers={"Authorization": "Bearer s3cret"}).status == 404
        assert raw(double, "PUT", "/v1/session/create").status == 403
        assert raw(double, "GET", "/v1/status/leader").status == 200  # no ACL on /v1/status
        anonymous = consul.Consul(host="127.0.0.1", port=double.port)
        with pytest.raises(consul.ACLPermissionDenied):
            anonymous.kv.get("k")
        with pytest.raises(consul.ACLPermissionDenied):
            anonymous.kv.put("k", "v")
        allowed = consul.Consul(host="127.0.0.1", port=double.port, token="s3cret")
        assert allowed.kv.put("k", "v") is True
        assert allowed.kv.get("k")[1]["Value"] == b"v"


# --- faults ----------------------------------------------------------------------------------------


def test_take_down_refuses_connections_and_bring_up_keeps_port_and_state(
    double: ConsulDouble, client: consul.Consul
) -> None:
    client.kv.put("kept", b"v")
    session = client.session.create()
    port, index = double.port, double.index
    double.take_down()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    with pytest.raises(requests.exceptions.ConnectionError):
        client.kv.get("kept")
    double.bring_up()
    assert double.port == port
    assert client.kv.get("kept")[1]["Value"] == b"v"
    assert client.session.info(session)[1]["ID"] == session
    assert double.index == index


def test_take_down_drops_an_in_flight_blocking_query(double: ConsulDouble, client: consul.Consul) -> None:
    client.kv.put("watched", b"v")
    index, _ = client.kv.get("watched")
    waiting = in_thread(lambda: client.kv.get("watched", index=index, wait="5s"))
    time.sleep(0.1)
    started = time.monotonic()
    double.take_down()
    with pytest.raises(requests.exceptions.ConnectionError):
        waiting()
    assert time.monotonic() - started < 2.0
    double.bring_up()
    assert client.kv.get("watched")[0] == index


def test_without_a_leader_only_status_answers(double: ConsulDouble, client: consul.Consul) -> None:
    client.kv.put("k", b"v")
    double.set_no_leader(True)
    for method, path in (
        ("GET", "/v1/kv/k"),
        ("PUT", "/v1/kv/k"),
        ("DELETE", "/v1/kv/k"),
        ("PUT", "/v1/session/create"),
        ("GET", "/v1/session/list"),
    ):
        response = raw(double, method, path)
        assert (response.status, response.body) == (500, b"No cluster leader"), (method, path)
    assert raw(double, "GET", "/v1/status/leader").body == b'""'
    assert raw(double, "GET", "/v1/status/peers").status == 200
    stale = raw(double, "GET", "/v1/kv/k?stale")  # a follower may serve a stale read, as in Consul
    assert stale.status == 200 and stale.headers["X-Consul-KnownLeader"] == "false"
    with pytest.raises(consul.ConsulException, match="No cluster leader"):
        client.kv.get("k")
    with pytest.raises(consul.ConsulException, match="No cluster leader"):
        client.kv.put("k", "v2")
    assert client.status.leader() == ""
    double.set_no_leader(False)
    assert client.kv.get("k")[1]["Value"] == b"v"
    assert raw(double, "GET", "/v1/kv/k").headers["X-Consul-KnownLeader"] == "true"


def test_without_a_leader_sessions_do_not_expire_and_a_new_leader_restarts_their_ttl() -> None:
    clock = ManualClock()
    with ConsulDouble(clock=clock, min_ttl=1.0) as double:
        session = create_session(double, TTL="1s")
        double.set_no_leader(True)
        clock.advance(10)
        double.set_no_leader(False)
        clock.advance(1.9)
        assert session in double.session_ids()
        clock.advance(0.2)
        assert session not in double.session_ids()


def test_set_delay_slows_every_answer(double: ConsulDouble) -> None:
    double.set_delay(0.3)
    started = time.monotonic()
    assert raw(double, "GET", "/v1/status/leader").status == 200
    assert time.monotonic() - started >= 0.3
    impatient = consul.Consul(host="127.0.0.1", port=double.port, connections_timeout=0.1)
    with pytest.raises(requests.exceptions.Timeout):
        impatient.kv.get("k")
    double.set_delay(0)
    started = time.monotonic()
    assert impatient.status.leader() == "127.0.0.1:8300"
    assert time.monotonic() - started < 0.3


def test_requests_are_logged_with_their_query(double: ConsulDouble, client: consul.Consul) -> None:
    client.kv.put("a", b"v")
    client.kv.get("a", index=1, wait="100ms")
    assert double.requests() == [("PUT", "/v1/kv/a"), ("GET", "/v1/kv/a?index=1&wait=100ms")]


def test_the_command_line_serves_until_sigterm() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "testbed.consul_double", "--port", str(port), "--min-ttl", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"127.0.0.1:{port}"
        client = consul.Consul(host="127.0.0.1", port=port)
        assert client.status.leader() == "127.0.0.1:8300"
        assert client.kv.put("k", "v") is True
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_direct_helpers_write_like_the_api(double: ConsulDouble, client: consul.Consul) -> None:
    modify = double.kv_put("direct", b"v", flags=2)
    assert modify == double.index
    assert client.kv.get("direct")[1]["Flags"] == 2
    assert double.kv_put("direct", b"v", flags=2) == modify  # no change, no new index
    session = client.session.create(lock_delay=0)
    assert client.kv.put("direct", b"v", acquire=session)
    assert double.invalidate_session(session) is True  # as if its TTL had run out
    assert double.invalidate_session(session) is False
    assert "Session" not in client.kv.get("direct")[1]
    double.kv_delete("direct")
    assert client.kv.get("direct")[1] is None


def test_deregistering_a_node_invalidates_its_sessions_and_releases_their_locks_after_a_lock_delay() -> None:
    clock = ManualClock()
    with ConsulDouble(clock=clock, min_ttl=1.0, nodes=["worker"]) as double:
        client = consul.Consul(host="127.0.0.1", port=double.port)
        on_worker = create_session(double, Node="worker", TTL="30s", LockDelay="5s")
        on_agent = create_session(double)
        assert client.kv.put("lock", b"held", acquire=on_worker)
        assert raw(double, "PUT", "/v1/catalog/deregister", b"{}").status == 400  # Node is required
        answer = raw(double, "PUT", "/v1/catalog/deregister", json.dumps({"Node": "worker"}).encode())
        assert (answer.status, answer.json()) == (200, True)
        assert on_worker not in double.session_ids() and on_agent in double.session_ids()
        _, entry = client.kv.get("lock")
        assert entry is not None and "Session" not in entry  # released (Behavior release)
        assert client.kv.put("lock", b"mine", acquire=on_agent) is False  # the lock-delay runs
        clock.advance(5.1)
        assert client.kv.put("lock", b"mine", acquire=on_agent) is True
        again = raw(double, "PUT", "/v1/session/create", json.dumps({"Node": "worker"}).encode())
        assert (again.status, again.body) == (500, b"Missing node registration")


def test_deregistering_needs_the_acl_token() -> None:
    with ConsulDouble(acl_token="management", nodes=["worker"]) as double:
        body = json.dumps({"Node": "worker"}).encode()
        assert raw(double, "PUT", "/v1/catalog/deregister", body).status == 403
        ok = raw(double, "PUT", "/v1/catalog/deregister", body, {"X-Consul-Token": "management"})
        assert ok.status == 200
