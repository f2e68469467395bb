"""The console's requests and answers: routes, sign-in, the CSRF defence, server-side pages (Jinja2)
and the event stream that keeps an open page live.

Who may look: on a loopback address without a token, anyone on the machine (as for /metrics). With
the controller's HTTP token (required off loopback), a request carries it as ``Authorization: Bearer``
or as the session cookie the sign-in form sets (HttpOnly, SameSite=Strict). Read-only but Resume:
Resume needs the token (a controller without one has no console write at all) and, from a browser
session, a CSRF token bound to that session and a same-origin ``Origin`` when the browser sends one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape

from desired_state.load import Loaded
from reconciler import __version__
from reconciler.console import pages
from reconciler.console.feed import ConsoleFeed
from reconciler.plan import Plan
from reconciler.store import ACTION_KINDS, ACTION_STATUSES, RUN_STATUSES, ActionFilter, AuditLog, parse_since

log = logging.getLogger("consul_reconciler.console")

COOKIE = "cr_console"
PAGE_SIZE = 50
KEEPALIVE = 15.0  # seconds between comments on an idle event stream (proxies drop silent streams)
MAX_STREAMS = 16  # open live pages at once: each holds one of the HTTP server's 64 connections
Pause = tuple[str, str | None, datetime]


class Backend(Protocol):
    """What the console reads from (and the one thing it asks of) the running controller."""

    feed: ConsoleFeed

    def identity(self) -> str: ...
    def source(self) -> str: ...
    def loaded(self) -> Loaded | None: ...
    def desired(self) -> dict[str, Any]: ...
    def statuses(self) -> dict[str, pages.HostStatus]: ...
    def audit(self) -> AuditLog: ...
    def doing(self) -> str | None: ...
    def leader(self) -> bool | None: ...
    def owners(self) -> dict[str, str | None] | None: ...
    def paused(self) -> Pause | None: ...
    def live_plan(self) -> tuple[Plan, int]: ...
    def resume(self, who: str) -> Pause | None: ...


@dataclass
class Request:
    method: str
    path: str  # without the query
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""
    bearer: bool = False  # the Authorization header carried the controller's token
    client: str = ""

    @classmethod
    def parse(
        cls, method: str, target: str, headers: Mapping[str, str], body: bytes = b"", **kw: Any
    ) -> Request:
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return cls(method, parts.path, query, headers, body, **kw)

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8", "replace")).items()}

    def cookie(self, name: str) -> str | None:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except Exception:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel else None


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: Callable[[Callable[[bytes], None]], None] | None = None  # an event stream, written as it goes
    done: Callable[[], None] | None = None  # called once the answer is sent or abandoned


class Console:
    def __init__(self, backend: Backend, token: str | None) -> None:
        self.backend = backend
        self.token = token
        self.env = Environment(
            loader=PackageLoader("reconciler.console", "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.env.filters["when"] = _when
        self.env.filters["ago"] = _ago

    # --- credentials ---------------------------------------------------------------------------------

    def _derived(self, purpose: str) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), purpose.encode(), hashlib.sha256).hexdigest()

    def session(self) -> str:
        """The cookie a signed-in browser carries: derived from the token, never the token itself."""
        return self._derived("console session")

    def csrf(self) -> str:
        return self._derived("console csrf:" + self.session())

    def signed_in(self, req: Request) -> bool:
        cookie = req.cookie(COOKIE)
        return self.token is not None and cookie is not None and hmac.compare_digest(cookie, self.session())

    def allowed(self, req: Request) -> bool:
        return self.token is None or req.bearer or self.signed_in(req)

    # --- routing -------------------------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/ui"
        if path == "/ui/login":
            return self._login(req)
        if not self.allowed(req):
            return self._page("login.html", req, status=401, error=None, next=req.path)
        if req.method == "POST":
            if path == "/ui/rollout/resume":
                return self._resume(req)
            if path == "/ui/logout":
                return _redirect(
                    "/ui/login", cookie=f"{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict"
                )
            return self._error(req, 405, f"{req.path} takes no POST")
        if req.method != "GET":
            return self._error(req, 405, f"{req.method} is not served here")
        try:
            if path == "/ui":
                return self._fleet(req)
            if path.startswith("/ui/hosts/"):
                return self._host(req, path.removeprefix("/ui/hosts/"))
            if path == "/ui/rollout":
                return self._rollout(req)
            if path == "/ui/plan":
                return self._plan(req)
            if path == "/ui/audit":
                return self._audit(req)
            if path.startswith("/ui/runs/"):
                return self._run(req, path.removeprefix("/ui/runs/"))
            if path == "/ui/desired":
                return self._desired(req)
            if path == "/ui/events":
                return self._events()
        except BadQuery as exc:
            return self._error(req, 400, str(exc))
        return self._error(req, 404, f"no page at {req.path}")

    # --- pages ---------------------------------------------------------------------------------------

    def _fleet(self, req: Request) -> Response:
        wanted = req.query.get("state", "all")
        if wanted not in pages.FILTERS:
            raise BadQuery(f"state={wanted!r} is not a filter; one of: {', '.join(pages.FILTERS)}")
        rows = self._rows()
        shown = [r for r in rows if r.shown_by(wanted)]
        sharded = self.backend.owners() is not None
        return self._page(
            "fleet.html", req, rows=shown, wanted=wanted, counts=pages.fleet_counts(rows), sharded=sharded
        )

    def _rows(self) -> list[pages.FleetRow]:
        b = self.backend
        loaded = b.loaded()
        audit = b.audit()
        names = [h.name for h in loaded.topology.hosts] if loaded else []
        names += [n for n in b.feed.hosts if n not in names]
        last = audit.last_actions(names)
        return pages.fleet_rows(loaded, b.feed.hosts, b.statuses(), last, b.owners())

    def _host(self, req: Request, name: str) -> Response:
        row = next((r for r in self._rows() if r.host == name), None)
        if row is None:
            return self._error(req, 404, f"no host {name!r} in the topology in force or seen by a pass")
        history = self.backend.audit().actions(ActionFilter(host=name, limit=PAGE_SIZE))
        return self._page("host.html", req, page=pages.host_page(row, self.backend.loaded(), history))

    def _rollout(self, req: Request) -> Response:
        b = self.backend
        feed = b.feed
        page = pages.rollout_page(
            b.loaded(), feed.plan, feed.plan_at, feed.in_pass, b.doing(), feed.look, feed.look_at, b.paused()
        )
        return self._page("rollout.html", req, page=page, can_resume=self.token is not None)

    def _plan(self, req: Request) -> Response:
        try:
            plan, hosts = self.backend.live_plan()
        except Exception as exc:  # the source or the database away: said on the page, not a 500
            return self._page("plan.html", req, lines=None, problem=f"{type(exc).__name__}: {exc}")
        return self._page("plan.html", req, lines=pages.plan_lines(plan, hosts), problem=None)

    def _audit(self, req: Request) -> Response:
        q = req.query
        runs = q.get("runs") == "1"
        kinds, statuses = sorted(ACTION_KINDS), sorted(RUN_STATUSES if runs else ACTION_STATUSES)
        kind = q.get("kind") or None
        status = q.get("status") or None
        if kind is not None and kind not in ACTION_KINDS:
            raise BadQuery(f"kind={kind!r} is not an action kind; one of: {', '.join(kinds)}")
        if status is not None and status not in statuses:
            raise BadQuery(f"status={status!r} is not valid here; one of: {', '.join(statuses)}")
        try:
            since = parse_since(q["since"]) if q.get("since") else None
        except ValueError as exc:
            raise BadQuery(f"since: {exc}") from None
        page = _int(q, "page", 1, minimum=1)
        run = _int(q, "run", None, minimum=1)
        offset = (page - 1) * PAGE_SIZE
        audit = self.backend.audit()
        if runs:
            found: list[Any] = audit.runs(
                limit=PAGE_SIZE + 1, offset=offset, status=status, since=since, host=q.get("host") or None
            )
        else:
            wanted = ActionFilter(
                host=q.get("host") or None,
                node=q.get("node") or None,
                kind=kind,
                status=status,
                since=since,
                run_id=run,
                limit=PAGE_SIZE + 1,
                offset=offset,
            )
            found = audit.actions(wanted)
        more = len(found) > PAGE_SIZE
        filters = {k: v for k, v in q.items() if k != "page" and v}
        return self._page(
            "audit.html",
            req,
            rows=found[:PAGE_SIZE],
            runs=runs,
            q=q,
            kinds=kinds,
            statuses=statuses,
            page_no=page,
            more=more,
            link=lambda n: (
                "/ui/audit?" + "&".join(f"{k}={quote(v)}" for k, v in {**filters, "page": str(n)}.items())
            ),
        )

    def _run(self, req: Request, ref: str) -> Response:
        if not ref.isdigit():
            return self._error(req, 404, f"no run {ref!r} (runs are numbered)")
        audit = self.backend.audit()
        run = audit.get_run(int(ref))
        if run is None:
            return self._error(req, 404, f"no run {ref} in the audit database")
        return self._page(
            "run.html", req, run=run, actions=audit.actions(ActionFilter(run_id=run.id, limit=None))
        )

    def _desired(self, req: Request) -> Response:
        b = self.backend
        info = b.desired()
        state = b.audit().state
        history = state.documents(b.source(), limit=PAGE_SIZE)
        diff = None
        a, c = req.query.get("a"), req.query.get("b")
        if a and c:
            try:
                diff = pages.diff_lines(state.find_document(a), state.find_document(c))
            except KeyError as exc:
                raise BadQuery(str(exc.args[0]) if exc.args else f"no kept document {a!r} or {c!r}") from None
        return self._page("desired.html", req, info=info, history=history, diff=diff, a=a, b=c)

    def _events(self) -> Response:
        feed = self.backend.feed

        def stream(write: Callable[[bytes], None]) -> None:
            seen = feed.generation
            write(f"retry: 1000\nid: {seen}\ndata: {seen}\n\n".encode())
            while True:
                now = feed.wait(seen, KEEPALIVE)
                if now is None:
                    return
                if now == seen:
                    write(b": still here\n\n")
                else:
                    seen = now
                    write(f"id: {seen}\ndata: {seen}\n\n".encode())

        if not self._streams.acquire(blocking=False):  # /metrics and /healthz must still get through
            message = (
                f"too many live pages at once ({MAX_STREAMS}); the pages still work, without live updates\n"
            )
            return Response(503, message.encode(), "text/plain; charset=utf-8", [("Retry-After", "30")])
        headers = [("Cache-Control", "no-store"), ("X-Accel-Buffering", "no")]
        return Response(
            200, content_type="text/event-stream", headers=headers, stream=stream, done=self._streams.release
        )

    # --- writes --------------------------------------------------------------------------------------

    def _login(self, req: Request) -> Response:
        nxt = _local(req.query.get("next") or req.form().get("next") or "/ui")
        if req.method == "GET":
            return self._page("login.html", req, error=None, next=nxt)
        if req.method != "POST":
            return self._error(req, 405, "sign in with GET (the form) or POST (the token)")
        if not _same_origin(req):
            return self._error(req, 403, "refused: the request came from another site (Origin)")
        if self.token is None:
            return _redirect(nxt)
        given = req.form().get("token", "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            log.warning("console sign-in refused from %s: wrong token", req.client or "?")
            return self._page(
                "login.html", req, status=401, error="That is not the controller's token.", next=nxt
            )
        cookie = f"{COOKIE}={self.session()}; Path=/ui; HttpOnly; SameSite=Strict"
        return _redirect(nxt, cookie=cookie)

    def _resume(self, req: Request) -> Response:
        if self.token is None:
            return self._error(
                req,
                403,
                "Resume needs the controller's HTTP token (--http-token-file); without one the console is "
                "read-only. Resume from the command line: consul-reconciler resume",
            )
        if not req.bearer:  # a browser session: the CSRF token of this session, and the same site
            if not _same_origin(req):
                return self._error(req, 403, "refused: the request came from another site (Origin)")
            given = req.form().get("csrf", "")
            if not hmac.compare_digest(given.encode(), self.csrf().encode()):
                return self._error(
                    req, 403, "refused: the form's CSRF token is missing or wrong; reload the page"
                )
        pause = self.backend.resume(f"the console ({req.client or 'unknown client'})")
        note = "resumed" if pause is not None else "none"
        return _redirect(f"/ui/rollout?resumed={note}")

    # --- rendering -----------------------------------------------------------------------------------

    def _page(self, name: str, req: Request, *, status: int = 200, **context: Any) -> Response:
        b = self.backend
        signed = self.signed_in(req)
        allowed = self.allowed(req)  # a stranger gets the sign-in form and nothing of the controller's
        common = {
            "req": req,
            "allowed": allowed,
            "path": req.path.rstrip("/") or "/ui",
            "identity": b.identity() if allowed else "",
            "source": b.source() if allowed else "",
            "leader": b.leader() if allowed else None,
            "version": __version__,
            "generation": b.feed.generation if allowed else 0,
            "last_pass_at": b.feed.last_pass_at if allowed else None,
            "csrf": self.csrf() if signed else "",
            "signed_in": signed,
            "needs_token": self.token is not None,
            "paused": b.paused() if allowed and name != "login.html" else None,
        }
        body = self.env.get_template(name).render(**common, **context).encode()
        headers = [
            ("Cache-Control", "no-store"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "same-origin"),
            (
                "Content-Security-Policy",
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
                "frame-ancestors 'none'",
            ),
        ]
        return Response(status, body, headers=headers)

    def _error(self, req: Request, status: int, message: str) -> Response:
        if not self.allowed(req):  # never a page with the controller's state to a stranger
            return Response(status, (message + "\n").encode(), "text/plain; charset=utf-8")
        return self._page("error.html", req, status=status, message=message)


class BadQuery(ValueError):
    """A filter or parameter the page cannot take; the message names it and what it may be."""


def _int(q: Mapping[str, str], name: str, default: int | None, minimum: int) -> Any:
    text = q.get(name)
    if not text:
        return default
    if not text.isdigit() or int(text) < minimum:
        raise BadQuery(f"{name}={text!r} is not a whole number of at least {minimum}")
    return int(text)


def _redirect(to: str, cookie: str | None = None) -> Response:
    headers = [("Location", to)]
    if cookie:
        headers.append(("Set-Cookie", cookie))
    return Response(303, b"", headers=headers)


def _local(target: str) -> str:
    """Only a path of this console: a sign-in never sends the browser to another site."""
    return target if target.startswith("/ui") and not target.startswith("//") else "/ui"


def _same_origin(req: Request) -> bool:
    origin = req.headers.get("Origin")
    if origin is None:
        return True  # not sent (curl, an old browser): the CSRF token and SameSite cookie decide
    host = req.headers.get("Host", "")
    return urlsplit(origin).netloc == host


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value.replace("T", " ")[:19]
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    seconds = max(0, round((datetime.now(UTC) - value).total_seconds()))
    if seconds < 90:
        return f"{seconds}s ago"
    if seconds < 5400:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"
