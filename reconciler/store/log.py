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

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Engine,
    delete,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from reconciler.store.db import (
    _SQLITE_WRITE_OPTION,
    SCHEMA_REVISION,
    _create_engine,
    _migrate,
    _stored_revision,
    normalize_url,
)
from reconciler.store.models import (
    ActionModel,
    DocumentModel,
    HostStateModel,
    KnownHostModel,
    RolloutPauseModel,
    RunModel,
    _as_utc,
    _utcnow,
)
from reconciler.store.rows import (
    ACTION_FINAL_STATUSES,
    ACTION_STATUSES,
    RUN_FINAL_STATUSES,
    ActionFilter,
    ActionRow,
    DocumentRow,
    HostState,
    RunRow,
    _document,
    _dumps,
)


def default_controller() -> str:
    """``hostname:pid`` of this process, recorded on every run."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _check_status(status: str, allowed: frozenset[str], what: str) -> None:
    if status not in allowed:
        raise ValueError(f"invalid {what} status {status!r}; expected one of {sorted(allowed)}")


def _duration_ms(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds() * 1000.0, 0.0)


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
