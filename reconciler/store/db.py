"""The audit database itself: its URL (a SQLAlchemy URL or a file path), the engine (SQLite tuned
for one writer at a time, private files), and the schema brought to the head Alembic revision."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    Engine,
    create_engine,
    event,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool
from sqlalchemy.pool.base import ConnectionPoolEntry

DEFAULT_DB_ENV: Final = "CONSUL_RECONCILER_DB"
"""Environment variable holding a SQLAlchemy URL or a file path for the audit database."""

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent / "migrations"
"""Alembic script location shipped inside the package."""
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


def sqlite_path(url_text: str) -> Path | None:
    """The file behind a SQLite URL; None for another database, or an in-memory or URI one."""
    url = make_url(url_text)
    return _sqlite_file(url) if url.get_backend_name() == "sqlite" else None


def _sqlite_file(url: URL) -> Path | None:
    """The file behind a SQLite URL, or None for in-memory / URI databases."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if url.query.get("uri") in ("true", "1"):
        return None
    return Path(database)


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
SCHEMA_REVISION: Final = "0008"


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
