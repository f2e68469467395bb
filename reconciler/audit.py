"""Audit log: every reconciliation run and every action the controller takes.

The log lives in a SQL database reached through SQLAlchemy (SQLite by default, any
SQLAlchemy URL accepted).  The schema is owned by the Alembic migrations in
``reconciler/migrations``; :class:`AuditLog` upgrades the database to the head
revision when it opens it, so the ORM models below never create tables themselves.

Callers only ever receive plain frozen dataclasses (:class:`RunRow`,
:class:`ActionRow`), never ORM objects.  Every public method uses its own short
session and transaction, so one :class:`AuditLog` can be shared by several threads.

Time stamps are timezone-aware UTC datetimes.  On SQLite they are stored as naive
UTC text (SQLite has no time zone type) and turned back into aware UTC values when
read; on PostgreSQL they are ``TIMESTAMP WITH TIME ZONE``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    create_engine,
    delete,
    event,
    select,
    update,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.pool.base import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

__all__ = [
    "ACTION_STATUSES",
    "DEFAULT_DB_ENV",
    "MIGRATIONS_DIR",
    "RUN_STATUSES",
    "SCHEMA_REVISION",
    "ActionFilter",
    "ActionRow",
    "AuditLog",
    "DocumentRow",
    "HostState",
    "RunRow",
    "default_database_url",
    "normalize_url",
    "parse_since",
]

DEFAULT_DB_ENV: Final = "CONSUL_RECONCILER_DB"
"""Environment variable holding a SQLAlchemy URL or a file path for the audit database."""

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
"""Alembic script location shipped inside the package."""

RUN_STATUSES: Final = frozenset({"running", "succeeded", "failed", "interrupted", "refused", "waiting"})
RUN_FINAL_STATUSES: Final = RUN_STATUSES - {"running"}
ACTION_STATUSES: Final = frozenset({"started", "succeeded", "failed", "skipped", "interrupted", "waiting"})
ACTION_FINAL_STATUSES: Final = ACTION_STATUSES - {"started"}

SQLITE_BUSY_TIMEOUT_MS: Final = 15_000
"""How long a SQLite connection waits for a lock held by another writer."""

_SQLITE_WRITE_OPTION: Final = "consul_reconciler_write"


# --------------------------------------------------------------------------- URLs


def normalize_url(value: str) -> str:
    """Turn a file path into a SQLite URL; anything that looks like a URL passes through.

    ``"path/to/x.db"`` becomes ``"sqlite:////abs/path/to/x.db"`` (``~`` is expanded);
    ``"postgresql+psycopg://..."`` or ``"sqlite:///x.db"`` are returned unchanged.
    """
    text = value.strip()
    if not text:
        raise ValueError("empty database location: give a SQLAlchemy URL or a file path")
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    return f"sqlite:///{path.as_posix()}"


def default_database_url() -> str:
    """The audit database URL: ``$CONSUL_RECONCILER_DB`` if set, else a per-user SQLite file.

    The file is ``$XDG_STATE_HOME/consul-reconciler/audit.db`` (when ``XDG_STATE_HOME``
    is an absolute path, as the XDG spec requires) or
    ``~/.local/state/consul-reconciler/audit.db``.
    """
    configured = os.environ.get(DEFAULT_DB_ENV, "").strip()
    if configured:
        return normalize_url(configured)
    xdg = os.environ.get("XDG_STATE_HOME", "").strip()
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return normalize_url(str(base / "consul-reconciler" / "audit.db"))


def _sqlite_file(url: URL) -> Path | None:
    """The file behind a SQLite URL, or None for in-memory / URI databases."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if url.query.get("uri") in ("true", "1"):
        return None
    return Path(database)


# --------------------------------------------------------------------------- ORM models


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always binds and returns aware UTC datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _as_utc(value)
        if dialect.name == "sqlite":
            # SQLite stores text; keep one canonical naive-UTC form so comparisons work.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return _as_utc(value)


# BIGINT ids on real servers; SQLite only auto-increments an "INTEGER PRIMARY KEY".
_BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING_CONVENTION: Final = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of the audit models (its metadata is what the migrations build)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RunModel(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_cluster_id_started_at", "cluster_id", "started_at"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    cluster_id: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(32))
    trigger: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    digest: Mapped[str | None] = mapped_column(String(128))
    controller: Mapped[str] = mapped_column(String(255))
    summary: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    lock_holder: Mapped[str | None] = mapped_column(String(255))
    lock_index: Mapped[int | None] = mapped_column(_BigId)


class DocumentModel(Base):
    """Every valid desired document the controller applied: the last known good state."""

    __tablename__ = "desired_documents"
    __table_args__ = (
        Index("ix_desired_documents_source_digest", "source", "digest", unique=True),
        Index("ix_desired_documents_source_last_applied", "source", "last_applied"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(1024))
    digest: Mapped[str] = mapped_column(String(128))
    cluster_id: Mapped[str] = mapped_column(String(255))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    last_applied: Mapped[datetime] = mapped_column(UTCDateTime())
    document: Mapped[str] = mapped_column(Text)


class ActionModel(Base):
    __tablename__ = "actions"
    __table_args__ = (
        Index("ix_actions_run_id", "run_id"),
        Index("ix_actions_host_started_at", "host", "started_at"),
        Index("ix_actions_status_started_at", "status", "started_at"),
        Index("ix_actions_started_at", "started_at"),
        # `audit --host H --status S`, `--node N`, `--kind K`: an index seek each, in started_at order
        # (without them, a host or node with few matching rows meant a walk over the whole table).
        Index("ix_actions_host_status_started_at", "host", "status", "started_at"),
        Index("ix_actions_node_started_at", "node", "started_at"),
        Index("ix_actions_kind_started_at", "kind", "started_at"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(_BigId, ForeignKey("runs.id"))
    seq: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(255))
    node: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str | None] = mapped_column(String(32))
    container: Mapped[str | None] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    old_hash: Mapped[str | None] = mapped_column(String(128))
    new_hash: Mapped[str | None] = mapped_column(String(128))
    image: Mapped[str | None] = mapped_column(String(512))
    container_id: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duration_ms: Mapped[float | None] = mapped_column(Float)


class HostStateModel(Base):
    """The controller's view of each host after its last pass: ok, backoff, degraded, unreachable."""

    __tablename__ = "host_states"

    cluster_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    state: Mapped[str] = mapped_column(String(32))
    failures: Mapped[int] = mapped_column(Integer)
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    drift: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RolloutPauseModel(Base):
    """A server rollout paused after a failed gate: no server is touched until `resume` or a new
    desired document."""

    __tablename__ = "rollout_pauses"

    cluster_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    digest: Mapped[str | None] = mapped_column(String(128))
    since: Mapped[datetime] = mapped_column(UTCDateTime())


class KnownHostModel(Base):
    __tablename__ = "known_hosts"

    cluster_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    endpoint: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())


# --------------------------------------------------------------------------- returned rows


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _row_dict(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(row):
        value = getattr(row, f.name)
        out[f.name] = _iso(value) if isinstance(value, datetime) else value
    return out


@dataclass(frozen=True)
class ActionFilter:
    """Which actions :meth:`AuditLog.actions` returns; ``None`` fields do not filter.

    ``since`` keeps actions started at or after that time (a naive value is UTC).
    ``limit`` caps the number of rows (newest first); ``None`` means no cap.
    """

    host: str | None = None
    node: str | None = None
    kind: str | None = None
    status: str | None = None
    since: datetime | None = None
    run_id: int | None = None
    limit: int | None = 100


@dataclass(frozen=True)
class ActionRow:
    id: int
    run_id: int
    seq: int
    host: str
    node: str | None
    role: str | None
    container: str | None
    kind: str
    reason: list[dict[str, Any]]
    old_hash: str | None
    new_hash: str | None
    image: str | None
    container_id: str | None
    status: str
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (times as ISO 8601 strings)."""
        return _row_dict(self)

    @classmethod
    def _from_model(cls, m: ActionModel) -> ActionRow:
        reason = json.loads(m.reason) if m.reason else []
        return cls(
            id=m.id,
            run_id=m.run_id,
            seq=m.seq,
            host=m.host,
            node=m.node,
            role=m.role,
            container=m.container,
            kind=m.kind,
            reason=reason if isinstance(reason, list) else [{"message": str(reason)}],
            old_hash=m.old_hash,
            new_hash=m.new_hash,
            image=m.image,
            container_id=m.container_id,
            status=m.status,
            error=m.error,
            started_at=m.started_at,
            finished_at=m.finished_at,
            duration_ms=m.duration_ms,
        )


@dataclass(frozen=True)
class RunRow:
    id: int
    cluster_id: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    trigger: str
    source: str
    digest: str | None
    controller: str
    summary: dict[str, Any] | None = field(default=None)
    error: str | None = None
    lock_holder: str | None = None
    lock_index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (times as ISO 8601 strings)."""
        return _row_dict(self)

    @classmethod
    def _from_model(cls, m: RunModel) -> RunRow:
        return cls(
            id=m.id,
            cluster_id=m.cluster_id,
            started_at=m.started_at,
            finished_at=m.finished_at,
            status=m.status,
            trigger=m.trigger,
            source=m.source,
            digest=m.digest,
            controller=m.controller,
            summary=json.loads(m.summary) if m.summary else None,
            error=m.error,
            lock_holder=m.lock_holder,
            lock_index=m.lock_index,
        )


@dataclass(frozen=True)
class DocumentRow:
    id: int
    source: str
    digest: str
    cluster_id: str
    first_seen: datetime
    last_applied: datetime
    document: str

    def to_dict(self, *, with_document: bool = False) -> dict[str, Any]:
        data = _row_dict(self)
        if not with_document:
            data.pop("document", None)
        return data


@dataclass(frozen=True)
class HostState:
    host: str
    state: str  # ok | backoff | degraded | unreachable
    failures: int
    retry_at: datetime | None
    drift: int
    detail: str | None
    updated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return _row_dict(self)


# --------------------------------------------------------------------------- the log


def _check_status(status: str, allowed: frozenset[str], what: str) -> None:
    if status not in allowed:
        raise ValueError(f"invalid {what} status {status!r}; expected one of {sorted(allowed)}")


def _duration_ms(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds() * 1000.0, 0.0)


def default_controller() -> str:
    """``hostname:pid`` of this process, recorded on every run."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _configure_sqlite(engine: Engine) -> None:
    """WAL + busy timeout, and SQLAlchemy-controlled transactions.

    pysqlite's own transaction handling is switched off so that every transaction
    starts with an explicit ``BEGIN``: ``BEGIN IMMEDIATE`` for writes (taking the
    write lock up front, so concurrent writers wait for ``busy_timeout`` instead of
    failing on a lock upgrade) and a plain deferred ``BEGIN`` for reads, which in WAL
    mode never block the writer.  This also makes the migrations transactional.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_SQLITE_WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def _private_file(path: Path) -> None:
    """The audit database holds the desired documents and every action: its folder is created 0700
    and the file 0600 (SQLite gives its -wal and -shm files the database file's mode)."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _create_engine(url_text: str) -> Engine:
    url = make_url(url_text)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    path = _sqlite_file(url)
    connect_args: dict[str, Any] = {
        "check_same_thread": False,
        "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000.0,
    }
    if not url.database or url.database == ":memory:":
        # One shared connection, otherwise every checkout would get a new empty database.
        engine = create_engine(url, connect_args=connect_args, poolclass=StaticPool)
    else:
        if path is not None:
            _private_file(path)
        engine = create_engine(url, connect_args=connect_args)
    _configure_sqlite(engine)
    return engine


# Alembic keeps the running migration's context in module globals (``alembic.context``),
# so two upgrades in one process must not overlap, even on different databases.
_MIGRATION_LOCK = threading.Lock()

# Key of the PostgreSQL advisory lock that serializes migrations between processes
# (SQLite gets the same effect from ``BEGIN IMMEDIATE``).
_PG_MIGRATION_LOCK_KEY: Final = 0x636F6E73756C  # "consul"


# The Alembic revision these models match (the newest file in migrations/versions). A database
# already there is opened without importing Alembic at all: that import is about 130 ms and 11 MB
# of resident memory, paid by every `apply` and every controller otherwise.
SCHEMA_REVISION: Final = "0005"


def _stored_revision(engine: Engine) -> str | None:
    """The database's Alembic revision, or None (a new database, or one Alembic never touched)."""
    try:
        with engine.connect() as connection:
            value = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except DBAPIError:
        return None
    return str(value) if value is not None else None


def _migrate(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the head revision, in one transaction."""
    from alembic import command
    from alembic.config import Config

    with _MIGRATION_LOCK, engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK_KEY})")
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


class AuditLog:
    """The audit database: runs, actions and the hosts the controller has applied to.

    Opening it runs the migrations up to head.  Safe to share between threads.
    ``clock`` (default: the current UTC time) supplies every time stamp written.
    """

    def __init__(self, url: str, *, clock: Callable[[], datetime] | None = None) -> None:
        self.url = normalize_url(url)
        self._clock = clock or _utcnow
        self._engine = _create_engine(self.url)
        self._is_sqlite = self._engine.dialect.name == "sqlite"
        write_engine = (
            self._engine.execution_options(**{_SQLITE_WRITE_OPTION: True})
            if self._is_sqlite
            else self._engine
        )
        self._lock = threading.Lock()
        self._closed = False
        # Records of what already happened (an action's outcome, a run's end) that the database did not
        # take: written, in order, before anything else as soon as it takes writes again.
        self._pending: list[Callable[[Session], None]] = []
        self._pending_lock = threading.Lock()
        try:
            if _stored_revision(self._engine) != SCHEMA_REVISION:
                _migrate(write_engine)
        except BaseException:
            self._engine.dispose()
            raise
        self._read_sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(write_engine, expire_on_commit=False)

    # -- lifecycle

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._engine.dispose()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog({self._engine.url.render_as_string(hide_password=True)!r})"

    @property
    def engine(self) -> Engine:
        return self._engine

    def _now(self) -> datetime:
        return _as_utc(self._clock())

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error. Records kept from
        an earlier failure are written first (and a failure to write them fails this write too)."""
        self.flush_pending()
        with self._write_sessions() as session, session.begin():
            yield session

    def flush_pending(self) -> int:
        """Write the records the database did not take earlier, oldest first; how many were written."""
        written = 0
        with self._pending_lock:
            while self._pending:
                with self._write_sessions() as session, session.begin():
                    self._pending[0](session)
                self._pending.pop(0)
                written += 1
        return written

    @property
    def pending(self) -> int:
        """Records of things that happened that the database has not taken yet."""
        with self._pending_lock:
            return len(self._pending)

    def _record_outcome(self, apply: Callable[[Session], None]) -> None:
        """Write the record of something that already happened. If the database fails, the record is
        kept (and written by the next write, or flush_pending) and the failure raised: an action that
        succeeded is never later read as interrupted only because its row could not be finished."""
        try:
            with self._write() as session:
                apply(session)
        except Exception:
            with self._pending_lock:
                self._pending.append(apply)
            raise

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._read_sessions() as session:
            yield session

    # -- runs

    def start_run(
        self,
        *,
        cluster_id: str,
        trigger: str,
        source: str,
        digest: str | None,
        controller: str | None = None,
        lock_holder: str | None = None,
        lock_index: int | None = None,
    ) -> int:
        """Record a new run with status ``running``; returns its id (committed).

        ``lock_holder`` and ``lock_index`` (the fencing token) name the leader lock this run acted under."""
        run = RunModel(
            cluster_id=cluster_id,
            started_at=self._now(),
            finished_at=None,
            status="running",
            trigger=trigger,
            source=source,
            digest=digest,
            controller=controller or default_controller(),
            summary=None,
            error=None,
            lock_holder=lock_holder,
            lock_index=lock_index,
        )
        with self._write() as session:
            session.add(run)
            session.flush()
            return run.id

    def finish_run(
        self,
        run_id: int,
        *,
        status: str,
        summary: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Close a run with a final status (anything but ``running``)."""
        _check_status(status, RUN_FINAL_STATUSES, "final run")
        finished = self._now()

        def apply(session: Session) -> None:
            run = session.get(RunModel, run_id)
            if run is None:
                raise KeyError(f"no run with id {run_id}")
            run.status = status
            run.finished_at = finished
            run.summary = None if summary is None else _dumps(summary)
            run.error = error

        self._record_outcome(apply)

    def runs(self, *, limit: int = 20, cluster_id: str | None = None) -> list[RunRow]:
        """Most recent runs first."""
        stmt = select(RunModel).order_by(RunModel.started_at.desc(), RunModel.id.desc())
        if cluster_id is not None:
            stmt = stmt.where(RunModel.cluster_id == cluster_id)
        if limit is not None and limit > 0:
            stmt = stmt.limit(limit)
        with self._read() as session:
            return [RunRow._from_model(m) for m in session.scalars(stmt)]

    def get_run(self, run_id: int) -> RunRow | None:
        with self._read() as session:
            run = session.get(RunModel, run_id)
            return None if run is None else RunRow._from_model(run)

    # -- actions

    def start_action(
        self,
        run_id: int,
        *,
        seq: int,
        host: str,
        kind: str,
        node: str | None = None,
        role: str | None = None,
        container: str | None = None,
        reason: list[dict[str, Any]] | None = None,
        old_hash: str | None = None,
        new_hash: str | None = None,
        image: str | None = None,
        container_id: str | None = None,
        status: str = "started",
    ) -> int:
        """Record an action about to happen; committed before this returns."""
        _check_status(status, ACTION_STATUSES, "action")
        action = self._new_action(
            run_id,
            seq=seq,
            host=host,
            kind=kind,
            node=node,
            role=role,
            container=container,
            reason=reason,
            old_hash=old_hash,
            new_hash=new_hash,
            image=image,
            container_id=container_id,
            status=status,
            error=None,
        )
        if status != "started":
            action.finished_at = action.started_at
            action.duration_ms = 0.0
        with self._write() as session:
            session.add(action)
            session.flush()
            return action.id

    def finish_action(
        self,
        action_id: int,
        *,
        status: str,
        container_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Close an action: final status, ``finished_at`` and ``duration_ms``.

        ``container_id`` is only overwritten when given (e.g. the id of a new container).
        """
        _check_status(status, ACTION_FINAL_STATUSES, "final action")
        finished = self._now()

        def apply(session: Session) -> None:
            action = session.get(ActionModel, action_id)
            if action is None:
                raise KeyError(f"no action with id {action_id}")
            action.status = status
            action.finished_at = finished
            action.duration_ms = _duration_ms(action.started_at, finished)
            if container_id is not None:
                action.container_id = container_id
            action.error = error

        self._record_outcome(apply)

    def record_action(
        self,
        run_id: int,
        *,
        seq: int,
        host: str,
        kind: str,
        node: str | None = None,
        role: str | None = None,
        container: str | None = None,
        reason: list[dict[str, Any]] | None = None,
        old_hash: str | None = None,
        new_hash: str | None = None,
        image: str | None = None,
        container_id: str | None = None,
        status: str = "skipped",
        error: str | None = None,
    ) -> int:
        """Record a one-shot action that is already over (a blocked change, a failed observe...).

        ``finished_at`` equals ``started_at`` and ``duration_ms`` is 0.  ``status`` must be
        final (not ``started``).
        """
        _check_status(status, ACTION_FINAL_STATUSES, "final action")
        action = self._new_action(
            run_id,
            seq=seq,
            host=host,
            kind=kind,
            node=node,
            role=role,
            container=container,
            reason=reason,
            old_hash=old_hash,
            new_hash=new_hash,
            image=image,
            container_id=container_id,
            status=status,
            error=error,
        )
        action.finished_at = action.started_at
        action.duration_ms = 0.0
        with self._write() as session:
            session.add(action)
            session.flush()
            return action.id

    def _new_action(
        self,
        run_id: int,
        *,
        seq: int,
        host: str,
        kind: str,
        node: str | None,
        role: str | None,
        container: str | None,
        reason: list[dict[str, Any]] | None,
        old_hash: str | None,
        new_hash: str | None,
        image: str | None,
        container_id: str | None,
        status: str,
        error: str | None,
    ) -> ActionModel:
        return ActionModel(
            run_id=run_id,
            seq=seq,
            host=host,
            node=node,
            role=role,
            container=container,
            kind=kind,
            reason=_dumps(list(reason or [])),
            old_hash=old_hash,
            new_hash=new_hash,
            image=image,
            container_id=container_id,
            status=status,
            error=error,
            started_at=self._now(),
            finished_at=None,
            duration_ms=None,
        )

    def actions(self, f: ActionFilter | None = None) -> list[ActionRow]:
        """Actions matching ``f``, newest first."""
        f = f or ActionFilter()
        stmt = select(ActionModel).order_by(ActionModel.started_at.desc(), ActionModel.id.desc())
        if f.host is not None:
            stmt = stmt.where(ActionModel.host == f.host)
        if f.node is not None:
            stmt = stmt.where(ActionModel.node == f.node)
        if f.kind is not None:
            stmt = stmt.where(ActionModel.kind == f.kind)
        if f.status is not None:
            stmt = stmt.where(ActionModel.status == f.status)
        if f.since is not None:
            stmt = stmt.where(ActionModel.started_at >= _as_utc(f.since))
        if f.run_id is not None:
            stmt = stmt.where(ActionModel.run_id == f.run_id)
        if f.limit is not None and f.limit > 0:
            stmt = stmt.limit(f.limit)
        with self._read() as session:
            return [ActionRow._from_model(m) for m in session.scalars(stmt)]

    def mark_interrupted(
        self,
        *,
        cluster_id: str | None = None,
        controller: str | None = None,
        alive: Callable[[str | None, str | None], bool] | None = None,
    ) -> int:
        """Close whatever a dead controller left open; returns the number of actions marked.

        Runs still ``running`` become ``interrupted`` and their actions still ``started``
        become ``interrupted`` with error ``"found unfinished at <time>"``; ``finished_at``
        stays empty because nobody knows when they stopped.  Without arguments every
        unfinished run and action in the database is closed, so only call it when no other
        controller can be writing to the same database (or narrow it down with
        ``cluster_id`` / ``controller``, which then only touch the actions of the runs
        they select).
        """
        now = self._now()
        message = f"found unfinished at {now.isoformat()}"
        run_filter = [RunModel.status == "running"]
        if cluster_id is not None:
            run_filter.append(RunModel.cluster_id == cluster_id)
        if controller is not None:
            run_filter.append(RunModel.controller == controller)
        if alive is not None:
            # Leave the runs of controllers still alive alone (a peer sharing this database)
            with self._read() as session:
                open_runs = session.execute(
                    select(RunModel.id, RunModel.controller, RunModel.lock_holder).where(*run_filter)
                ).all()
            live = [run_id for run_id, owner, holder in open_runs if alive(owner, holder)]
            if live:
                run_filter.append(RunModel.id.not_in(live))
        narrowed = cluster_id is not None or controller is not None or alive is not None
        with self._write() as session:
            act_stmt = update(ActionModel).where(ActionModel.status == "started")
            if narrowed:
                act_stmt = act_stmt.where(ActionModel.run_id.in_(select(RunModel.id).where(*run_filter)))
            result = session.execute(
                act_stmt.values(status="interrupted", error=message).execution_options(
                    synchronize_session=False
                )
            )
            count: int = getattr(result, "rowcount", 0) or 0
            session.execute(
                update(RunModel)
                .where(*run_filter)
                .values(status="interrupted", error=message)
                .execution_options(synchronize_session=False)
            )
        return count

    # -- known hosts

    def remember_host(self, cluster_id: str, host: str, endpoint: dict[str, Any]) -> None:
        """Insert or update the endpoint used to reach ``host`` (portable upsert)."""
        encoded = _dumps(endpoint)
        for _attempt in range(3):
            now = self._now()
            try:
                with self._write() as session:
                    result = session.execute(
                        update(KnownHostModel)
                        .where(KnownHostModel.cluster_id == cluster_id, KnownHostModel.host == host)
                        .values(endpoint=encoded, last_seen=now)
                        .execution_options(synchronize_session=False)
                    )
                    if not getattr(result, "rowcount", 0):
                        session.add(
                            KnownHostModel(
                                cluster_id=cluster_id,
                                host=host,
                                endpoint=encoded,
                                first_seen=now,
                                last_seen=now,
                            )
                        )
                return
            except IntegrityError:
                # Another writer inserted the same host between our UPDATE and INSERT
                # (possible on servers with row-level locking); the UPDATE wins next time.
                continue
        raise RuntimeError(f"could not record known host {host!r} for cluster {cluster_id!r}")

    def forget_host(self, cluster_id: str, host: str) -> None:
        with self._write() as session:
            session.execute(
                delete(KnownHostModel)
                .where(KnownHostModel.cluster_id == cluster_id, KnownHostModel.host == host)
                .execution_options(synchronize_session=False)
            )

    def known_hosts(self, cluster_id: str) -> dict[str, dict[str, Any]]:
        """``host -> endpoint`` for every host remembered for ``cluster_id``."""
        stmt = (
            select(KnownHostModel.host, KnownHostModel.endpoint)
            .where(KnownHostModel.cluster_id == cluster_id)
            .order_by(KnownHostModel.host)
        )
        with self._read() as session:
            return {host: json.loads(endpoint) for host, endpoint in session.execute(stmt)}

    # -- host states (written by the controller after each pass, read by `status`)

    def set_host_states(self, cluster_id: str, states: list[HostState]) -> None:
        now = self._now()
        with self._write() as session:
            for item in states:
                session.execute(
                    delete(HostStateModel)
                    .where(HostStateModel.cluster_id == cluster_id, HostStateModel.host == item.host)
                    .execution_options(synchronize_session=False)
                )
                session.add(
                    HostStateModel(
                        cluster_id=cluster_id,
                        host=item.host,
                        state=item.state,
                        failures=item.failures,
                        retry_at=item.retry_at,
                        drift=item.drift,
                        detail=item.detail,
                        updated_at=now,
                    )
                )

    def host_states(self, cluster_id: str) -> dict[str, HostState]:
        stmt = select(HostStateModel).where(HostStateModel.cluster_id == cluster_id)
        with self._read() as session:
            return {
                m.host: HostState(m.host, m.state, m.failures, m.retry_at, m.drift, m.detail, m.updated_at)
                for m in session.scalars(stmt)
            }

    # -- desired documents (last known good)

    def keep_document(self, *, source: str, digest: str, cluster_id: str, document: str) -> None:
        """Remember a valid document that was applied (secrets are references in it, never values)."""
        now = self._now()
        with self._write() as session:
            found = session.scalars(
                select(DocumentModel).where(DocumentModel.source == source, DocumentModel.digest == digest)
            ).first()
            if found is None:
                session.add(
                    DocumentModel(
                        source=source,
                        digest=digest,
                        cluster_id=cluster_id,
                        first_seen=now,
                        last_applied=now,
                        document=document,
                    )
                )
            else:
                found.last_applied = now

    def last_document(self, source: str) -> DocumentRow | None:
        """The most recently applied valid document of ``source``."""
        stmt = (
            select(DocumentModel)
            .where(DocumentModel.source == source)
            .order_by(DocumentModel.last_applied.desc(), DocumentModel.id.desc())
            .limit(1)
        )
        with self._read() as session:
            found = session.scalars(stmt).first()
            return None if found is None else _document(found)

    def documents(self, source: str | None = None, limit: int = 50) -> list[DocumentRow]:
        """Kept documents, newest first."""
        stmt = select(DocumentModel).order_by(DocumentModel.first_seen.desc(), DocumentModel.id.desc())
        if source is not None:
            stmt = stmt.where(DocumentModel.source == source)
        with self._read() as session:
            return [_document(m) for m in session.scalars(stmt.limit(limit))]

    def find_document(self, ref: str) -> DocumentRow:
        """A kept document by id (``12``) or digest prefix (``3fa2c1``); KeyError names what was wrong."""
        with self._read() as session:
            if ref.isdigit():
                found = session.get(DocumentModel, int(ref))
                if found is not None:
                    return _document(found)
            if len(ref) < 4:
                raise KeyError(f"no kept document with id {ref} (give an id or at least 4 digest characters)")
            matches = list(session.scalars(select(DocumentModel).where(DocumentModel.digest.startswith(ref))))
            if not matches:
                raise KeyError(f"no kept document with id or digest {ref!r}")
            if len({m.digest for m in matches}) > 1:
                raise KeyError(
                    f"digest prefix {ref!r} is ambiguous ({len(matches)} documents); give more of it"
                )
            return _document(matches[0])

    # -- rollout pauses

    def pause_rollout(self, cluster_id: str, reason: str, digest: str | None) -> None:
        with self._write() as session:
            session.execute(delete(RolloutPauseModel).where(RolloutPauseModel.cluster_id == cluster_id))
            session.add(
                RolloutPauseModel(cluster_id=cluster_id, reason=reason, digest=digest, since=self._now())
            )

    def rollout_pause(self, cluster_id: str) -> tuple[str, str | None, datetime] | None:
        """(reason, digest, since) of the pause in force for ``cluster_id``, if any."""
        with self._read() as session:
            found = session.get(RolloutPauseModel, cluster_id)
            return None if found is None else (found.reason, found.digest, found.since)

    def resume_rollout(self, cluster_id: str) -> bool:
        with self._write() as session:
            result = session.execute(
                delete(RolloutPauseModel).where(RolloutPauseModel.cluster_id == cluster_id)
            )
            return bool(getattr(result, "rowcount", 0))

    # -- retention

    def prune(self, older_than: datetime) -> int:
        """Delete finished runs (and their actions) that started before ``older_than``.

        Returns the number of action rows deleted. Running runs are never pruned."""
        cutoff = _as_utc(older_than)
        old_runs = select(RunModel.id).where(RunModel.started_at < cutoff, RunModel.status != "running")
        with self._write() as session:
            deleted = session.execute(
                delete(ActionModel)
                .where(ActionModel.run_id.in_(old_runs))
                .execution_options(synchronize_session=False)
            )
            session.execute(
                delete(RunModel)
                .where(RunModel.started_at < cutoff, RunModel.status != "running")
                .execution_options(synchronize_session=False)
            )
            return int(getattr(deleted, "rowcount", 0) or 0)


def _document(m: DocumentModel) -> DocumentRow:
    return DocumentRow(m.id, m.source, m.digest, m.cluster_id, m.first_seen, m.last_applied, m.document)


# --------------------------------------------------------------------------- --since parsing

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_SINCE_FORMS: Final = (
    "a relative age such as 90s, 15m, 2h, 3d or 1w (seconds, minutes, hours, days, weeks), "
    "or an ISO 8601 date or date/time such as 2024-05-01, 2024-05-01T12:30:00 or "
    "2024-05-01T12:30:00+02:00 (no offset means UTC)"
)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """Parse a ``--since`` value into an aware UTC datetime.

    ``"90s"``, ``"15m"``, ``"2h"``, ``"3d"``, ``"1w"`` are ages relative to ``now``
    (default: the current time); anything else must be an ISO 8601 date or date/time,
    a naive one being UTC.  Raises :class:`ValueError` naming the accepted forms.
    """
    value = text.strip()
    if not value:
        raise ValueError(f"empty time: expected {_SINCE_FORMS}")
    match = _RELATIVE.match(value)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        reference = _as_utc(now) if now is not None else _utcnow()
        try:
            return reference - timedelta(**{_UNITS[unit]: amount})
        except OverflowError:
            raise ValueError(f"time {text!r} is too far in the past") from None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"invalid time {text!r}: expected {_SINCE_FORMS}") from None
    try:
        return _as_utc(parsed)
    except OverflowError:
        raise ValueError(f"time {text!r} is outside the years 1 to 9999 in UTC") from None
