"""The open audit database: the engine, the schema brought to head on open, short read and write
sessions, and the queue of outcomes the database did not take.

The database is reached through SQLAlchemy (SQLite by default, any SQLAlchemy URL accepted).  The
schema is owned by the Alembic migrations in ``reconciler/migrations``; :class:`Database` upgrades the
database to the head revision when it opens it, so the ORM models never create tables themselves.

Every read and write uses its own short session and transaction, so one :class:`Database` (and what
is built on it: :class:`~reconciler.store.audit.AuditLog`,
:class:`~reconciler.store.state.ControllerState`) can be shared by several threads.

Time stamps are timezone-aware UTC datetimes.  On SQLite they are stored as naive UTC text (SQLite has
no time zone type) and turned back into aware UTC values when read; on PostgreSQL they are
``TIMESTAMP WITH TIME ZONE``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Self

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from reconciler.store.db import (
    _SQLITE_WRITE_OPTION,
    SCHEMA_REVISION,
    _create_engine,
    _migrate,
    _stored_revision,
    normalize_url,
)
from reconciler.store.models import _as_utc, _utcnow


class Database:
    """One engine on the audit database, migrated to head when opened.  Safe to share between threads.

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._engine.url.render_as_string(hide_password=True)!r})"

    @property
    def engine(self) -> Engine:
        return self._engine

    def _now(self) -> datetime:
        return _as_utc(self._clock())

    # -- sessions

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error. Records kept from
        an earlier failure are written first (and a failure to write them fails this write too)."""
        self.flush_pending()
        with self._write_sessions() as session, session.begin():
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._read_sessions() as session:
            yield session

    # -- outcomes the database did not take

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
