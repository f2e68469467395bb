"""The console over real HTTP (the controller's own server, reconciler.httpserver) and a real SQLite
audit database: who may look, sign-in, the CSRF defence of Resume, the filters' errors, escaping, and
the event stream. The controller behind it is a stand-in holding fixed state (its pages against a
controller converging real engines are tests/integration/test_console_browser.py's)."""

from __future__ import annotations

import http.client
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from desired_state.configfiles import attach
from desired_state.load import Loaded, load_topology
from reconciler.console.feed import ConsoleFeed
from reconciler.console.memory import HostSeen
from reconciler.console.pages import HostStatus
from reconciler.console.web import COOKIE, MAX_STREAMS, Console
from reconciler.httpserver import StatusServer
from reconciler.plan import Plan
from reconciler.store import ActionRecord, AuditLog
from testbed.controller_harness import wait_for

TOKEN = "s3cret-console-token"
DOC = b"""
cluster: shop
hosts:
  - {name: h1, docker: 'unix:///nonexistent/1.sock', advertise: 127.0.10.1, role: server}
  - {name: h2, docker: 'unix:///nonexistent/2.sock', advertise: 127.0.10.2, role: client}
"""
PAUSE = ("server h1 not healthy within 60s: h1 is not a voter", None, datetime(2026, 12, 1, tzinfo=UTC))


@dataclass
class StandIn:
    """The controller as the console sees it (reconciler.console.web.Backend), with fixed state."""

    audit_log: AuditLog
    feed: ConsoleFeed = field(default_factory=ConsoleFeed)
    doc: Loaded = field(default_factory=lambda: attach(load_topology(DOC, source="t.yaml")))
    pause: tuple[str, str | None, datetime] | None = PAUSE
    resumed_by: list[str] = field(default_factory=list)
    shares: dict[str, str | None] | None = None  # run --shard: host -> its controller

    def identity(self) -> str:
        return "mgmt:4242"

    def source(self) -> str:
        return "file:t.yaml"

    def loaded(self) -> Loaded | None:
        return self.doc

    def desired(self) -> dict[str, Any]:
        return {
            "loaded": self.doc,
            "digest": self.doc.digest,
            "kept": False,
            "source_error": None,
            "rejected": None,
        }

    def statuses(self) -> dict[str, HostStatus]:
        return {"h2": HostStatus("backoff", 2, datetime(2026, 12, 1, 12, tzinfo=UTC), "boom")}

    def audit(self) -> AuditLog:
        return self.audit_log

    def doing(self) -> str | None:
        return None

    def leader(self) -> bool | None:
        return None

    def owners(self) -> dict[str, str | None] | None:
        return self.shares

    def paused(self) -> tuple[str, str | None, datetime] | None:
        return self.pause

    def live_plan(self) -> tuple[Plan, int]:
        return Plan("shop", ()), 2

    def resume(self, who: str) -> tuple[str, str | None, datetime] | None:
        self.resumed_by.append(who)
        pause, self.pause = self.pause, None
        return pause


@dataclass
class Served:
    backend: StandIn
    port: int

    def request(
        self, method: str, path: str, body: str = "", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body.encode(), headers=headers or {})
            answer = conn.getresponse()
            return answer.status, dict(answer.getheaders()), answer.read().decode()
        finally:
            conn.close()

    def sign_in(self) -> str:
        status, headers, _ = self.post("/ui/login", {"token": TOKEN, "next": "/ui"})
        assert status == 303, status
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        return cookie.split(";", 1)[0]

    def post(
        self, path: str, form: dict[str, str], headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        hdrs = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        return self.request("POST", path, urllib.parse.urlencode(form), hdrs)


def serve(tmp_path: Path, token: str | None) -> Iterator[Served]:
    audit = AuditLog(str(tmp_path / "audit.db"))
    run = audit.start_run(cluster_id="shop", trigger="test", source="file:t.yaml", digest="d" * 64)
    for seq in range(60):  # more than a page
        reason = [{"message": "container is missing <script>alert(1)</script>"}]
        record = ActionRecord(
            seq=seq, host="h1" if seq % 2 else "h2", kind="create", container="consul", reason=reason
        )
        audit.record_action(run, record, status="failed" if seq == 7 else "succeeded")
    audit.finish_run(run, status="failed", error="host h1: <b>boom</b>")
    backend = StandIn(audit)
    backend.feed.hosts = {"h1": HostSeen(datetime.now(UTC), True, None, {"consul": "running"}, ())}
    server = StatusServer(
        "127.0.0.1:0",
        CollectorRegistry(),
        lambda: (True, {}),
        lambda: (True, {}),
        lambda: {},
        token=token,
        console=Console(backend, token),
    )
    server.start()
    try:
        yield Served(backend, server.port)
    finally:
        backend.feed.close()
        server.stop()
        audit.close()


@pytest.fixture
def with_token(tmp_path: Path) -> Iterator[Served]:
    yield from serve(tmp_path, TOKEN)


@pytest.fixture
def open_console(tmp_path: Path) -> Iterator[Served]:
    yield from serve(tmp_path, None)


def test_without_the_token_only_the_sign_in_form_and_nothing_of_the_fleet(with_token: Served) -> None:
    for path in ("/ui", "/ui/hosts/h1", "/ui/audit", "/ui/events", "/ui/desired", "/ui/nope"):
        status, _, body = with_token.request("GET", path)
        assert status == 401, path
        leaks = ("data-host", "mgmt:4242", "127.0.10", "file:t.yaml", "not a voter")
        assert not [leak for leak in leaks if leak in body], path
    assert 'name="token"' in with_token.request("GET", "/ui")[2]
    wrong = with_token.post("/ui/login", {"token": "guess"})
    assert wrong[0] == 401 and "not the controller" in wrong[2] and "Set-Cookie" not in wrong[1]
    assert with_token.request("GET", "/ui", headers={"Cookie": f"{COOKIE}=forged"})[0] == 401
    status, _, body = with_token.request("GET", "/ui", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and 'data-host="h1"' in body
    cookie = with_token.sign_in()
    status, _, body = with_token.request("GET", "/ui/hosts/h1", headers={"Cookie": cookie})
    assert status == 200 and "docker run" in body


def test_sign_in_never_sends_the_browser_elsewhere(with_token: Served) -> None:
    status, headers, _ = with_token.post("/ui/login", {"token": TOKEN, "next": "https://evil.example/"})
    assert status == 303 and headers["Location"] == "/ui"
    status, headers, _ = with_token.post("/ui/login", {"token": TOKEN, "next": "//evil.example/ui"})
    assert headers["Location"] == "/ui"


def test_resume_needs_the_sessions_csrf_token_and_the_same_origin(with_token: Served) -> None:
    cookie = with_token.sign_in()
    page = with_token.request("GET", "/ui/rollout", headers={"Cookie": cookie})[2]
    assert "not a voter" in page and 'id="resume"' in page
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert csrf is not None
    host = f"127.0.0.1:{with_token.port}"
    refused = [
        with_token.post("/ui/rollout/resume", {}, {"Cookie": cookie}),  # no CSRF token
        with_token.post("/ui/rollout/resume", {"csrf": "0" * 64}, {"Cookie": cookie}),  # a wrong one
        with_token.post("/ui/rollout/resume", {"csrf": csrf[1]}, {"Cookie": cookie, "Origin": "http://evil.example"}),
        with_token.post("/ui/rollout/resume", {"csrf": csrf[1]}),  # no session at all
    ]  # fmt: skip
    assert [r[0] for r in refused] == [403, 403, 403, 401]
    assert with_token.backend.resumed_by == []
    status, headers, _ = with_token.post(
        "/ui/rollout/resume", {"csrf": csrf[1]}, {"Cookie": cookie, "Origin": f"http://{host}", "Host": host}
    )
    assert status == 303 and headers["Location"] == "/ui/rollout?resumed=resumed"
    assert with_token.backend.resumed_by == ["the console (127.0.0.1)"]
    # a program with the bearer token needs no CSRF token (a browser never sends that header by itself)
    bearer = with_token.request("POST", "/ui/rollout/resume", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer[0] == 303 and bearer[1]["Location"] == "/ui/rollout?resumed=none"


def test_without_a_token_the_console_is_read_only(open_console: Served) -> None:
    page = open_console.request("GET", "/ui/rollout")[2]
    assert 'id="resume"' not in page and "read-only" in page
    status, _, body = open_console.post("/ui/rollout/resume", {"csrf": "x"})
    assert status == 403 and "--http-token-file" in body
    assert open_console.backend.resumed_by == []


def test_filters_are_checked_and_name_what_is_wrong(open_console: Served) -> None:
    bad = {
        "/ui/audit?kind=nuke": "kind='nuke' is not an action kind; one of: ",
        "/ui/audit?runs=1&status=started": "status='started' is not valid here",
        "/ui/audit?since=yesterday": "since: ",
        "/ui/audit?page=0": "page='0' is not a whole number of at least 1",
        "/ui?state=sideways": "state='sideways' is not a filter; one of: all, drift",
        "/ui/desired?a=1&b=999": "no kept document",
    }
    for path, message in bad.items():
        status, _, body = open_console.request("GET", path)
        assert status in (400, 404) and message.replace("'", "&#39;") in body, (path, body[-800:])
    status, _, body = open_console.request("GET", "/ui/audit?host=h1&status=failed&kind=create")
    assert status == 200 and body.count('data-status="failed"') == 1 and 'data-host="h2"' not in body


def test_the_audit_is_paginated_and_every_stored_text_is_escaped(open_console: Served) -> None:
    first = open_console.request("GET", "/ui/audit")[2]
    assert first.count("<tr data-kind=") == 50 and 'rel="next"' in first and 'rel="prev"' not in first
    second = open_console.request("GET", "/ui/audit?page=2")[2]
    assert second.count("<tr data-kind=") == 10 and 'rel="prev"' in second and 'rel="next"' not in second
    assert "<script>alert(1)</script>" not in first and "&lt;script&gt;alert(1)&lt;/script&gt;" in first
    run = open_console.request("GET", "/ui/runs/1")[2]
    assert "<b>boom</b>" not in run and "&lt;b&gt;boom&lt;/b&gt;" in run


def test_the_event_stream_tells_an_open_page_of_each_change_at_once(open_console: Served) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", open_console.port, timeout=10)
    conn.request("GET", "/ui/events")
    answer = conn.getresponse()
    assert answer.status == 200 and answer.getheader("Content-Type") == "text/event-stream"
    start = open_console.backend.feed.generation
    assert answer.fp.readline().startswith(b"retry:")
    lines = [answer.fp.readline() for _ in range(3)]
    assert lines == [f"id: {start}\n".encode(), f"data: {start}\n".encode(), b"\n"]
    threading.Timer(0.2, open_console.backend.feed.changed).start()
    # the change itself, not the keep-alive comment (": still here") a quiet stream gets every 15 s
    assert answer.fp.readline() == f"id: {start + 1}\n".encode()
    conn.close()


def test_the_desired_state_page_shows_the_document_and_a_diff_of_any_two_kept(open_console: Served) -> None:
    state = open_console.backend.audit_log.state
    for text in ("cluster: shop\nhosts: []\n", "cluster: shop\nhosts: [h1]\n"):
        state.keep_document(source="file:t.yaml", digest=str(hash(text)), cluster_id="shop", document=text)
    page = open_console.request("GET", "/ui/desired")[2]
    assert open_console.backend.doc.digest in page and "127.0.10.2" in page  # the document in force
    assert page.count('name="a"') == 2 and page.count('name="b"') == 2
    status, _, diff = open_console.request("GET", "/ui/desired?a=1&b=2")
    assert status == 200
    assert '<span class="del">-hosts: []</span>' in diff and '<span class="add">+hosts: [h1]</span>' in diff


def test_live_pages_are_capped_so_that_metrics_and_health_still_get_through(open_console: Served) -> None:
    def open_stream() -> tuple[http.client.HTTPConnection, int]:
        conn = http.client.HTTPConnection("127.0.0.1", open_console.port, timeout=10)
        conn.request("GET", "/ui/events")
        answer = conn.getresponse()
        if answer.status == 200:
            answer.fp.readline()  # the stream has begun: its slot is held
        return conn, answer.status

    streams = [open_stream() for _ in range(MAX_STREAMS)]
    try:
        assert {status for _, status in streams} == {200}
        extra, status = open_stream()
        extra.close()
        assert status == 503
        assert open_console.request("GET", "/metrics")[0] == 200
        assert open_console.request("GET", "/healthz")[0] == 200
        page = open_console.request("GET", "/ui")[2]  # the pages themselves are served
        assert 'data-host="h1"' in page and "/ui/runs/1" in page  # h1's last action, found in one query
        streams.pop()[0].close()  # a page closed: its slot is freed at the stream's next write

        def reopened() -> bool:
            open_console.backend.feed.changed()
            conn, code = open_stream()
            if code == 200:
                streams.append((conn, code))
                return True
            conn.close()
            return False

        wait_for(reopened, 10, "the closed page's slot to be freed", interval=0.2)
    finally:
        for conn, _ in streams:
            conn.close()


def test_sharded_the_fleet_and_host_pages_name_each_hosts_controller(open_console: Served) -> None:
    page = open_console.request("GET", "/ui")[2]
    assert "<th>controller</th>" not in page  # a controller alone: no such column
    open_console.backend.shares = {"h1": "mgmt:4242", "h2": "other:77"}
    page = open_console.request("GET", "/ui")[2]
    assert "<th>controller</th>" in page
    assert "mgmt:4242 (this one)" in page and "other:77" in page
    host = open_console.request("GET", "/ui/hosts/h2")[2]
    assert "controller (owner)" in host and "other:77" in host and "(this one)" not in host
