"""The audit log proper: every reconciliation run and every action the controller takes.

:class:`AuditLog` is a :class:`~reconciler.store.database.Database` (one engine, one queue of outcomes
the database did not take) that writes and reads runs and actions.  The controller's own state kept in
the same database (known hosts, host states, kept documents, rollout pauses) is ``AuditLog.state``, a
:class:`~reconciler.store.state.ControllerState` on the same database.

Callers only ever receive plain frozen dataclasses (:class:`RunRow`, :class:`ActionRow`), never ORM
objects, and give an action as an :class:`ActionRecord`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from reconciler.store.database import Database
from reconciler.store.models import ActionModel, RunModel, _as_utc
from reconciler.store.rows import (
    ACTION_FINAL_STATUSES,
    ACTION_STATUSES,
    RUN_FINAL_STATUSES,
    ActionFilter,
    ActionRecord,
    ActionRow,
    RunRow,
    _dumps,
)
from reconciler.store.snapshots import SnapshotLog
from reconciler.store.state import ControllerState


def default_controller() -> str:
    """``hostname:pid`` of this process, recorded on every run."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _check_status(status: str, allowed: frozenset[str], what: str) -> None:
    if status not in allowed:
        raise ValueError(f"invalid {what} status {status!r}; expected one of {sorted(allowed)}")


def _duration_ms(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds() * 1000.0, 0.0)


class AuditLog(Database):
    """The audit database: runs and actions, and (as :attr:`state`) the controller's state beside them.

    Opening it runs the migrations up to head.  Safe to share between threads.
    ``clock`` (default: the current UTC time) supplies every time stamp written.
    """

    def __init__(self, url: str, *, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(url, clock=clock)
        # known hosts, host states, kept documents, rollout pauses: this engine, this pending queue
        self.state = ControllerState(self)
        # raft snapshots taken before server changes: the same engine
        self.snapshots = SnapshotLog(self)

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

    def runs(
        self,
        *,
        limit: int = 20,
        cluster_id: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        host: str | None = None,
        offset: int = 0,
    ) -> list[RunRow]:
        """Most recent runs first; ``status`` and ``since`` (started at or after) filter the runs, and
        ``host`` keeps the runs with an action row on that host; ``offset`` rows are skipped first."""
        stmt = select(RunModel).order_by(RunModel.started_at.desc(), RunModel.id.desc())
        if cluster_id is not None:
            stmt = stmt.where(RunModel.cluster_id == cluster_id)
        if status is not None:
            stmt = stmt.where(RunModel.status == status)
        if since is not None:
            stmt = stmt.where(RunModel.started_at >= _as_utc(since))
        if host is not None:
            stmt = stmt.where(RunModel.id.in_(select(ActionModel.run_id).where(ActionModel.host == host)))
        if limit is not None and limit > 0:
            stmt = stmt.limit(limit)
        if offset > 0:
            stmt = stmt.offset(offset)
        with self._read() as session:
            return [RunRow._from_model(m) for m in session.scalars(stmt)]

    def get_run(self, run_id: int) -> RunRow | None:
        with self._read() as session:
            run = session.get(RunModel, run_id)
            return None if run is None else RunRow._from_model(run)

    # -- actions

    def start_action(self, run_id: int, record: ActionRecord, *, status: str = "started") -> int:
        """Record an action about to happen; committed before this returns."""
        _check_status(status, ACTION_STATUSES, "action")
        action = self._new_action(run_id, record, status=status, error=None)
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
        reason: list[dict[str, Any]] | None = None,
    ) -> None:
        """Close an action: final status, ``finished_at`` and ``duration_ms``.

        ``container_id`` and ``reason`` are only overwritten when given (e.g. the id of a new container,
        what a snapshot turned out to be).
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
            if reason is not None:
                action.reason = _dumps(reason)
            action.error = error

        self._record_outcome(apply)

    def record_action(
        self, run_id: int, record: ActionRecord, *, status: str = "skipped", error: str | None = None
    ) -> int:
        """Record a one-shot action that is already over (a blocked change, a failed observe...).

        ``finished_at`` equals ``started_at`` and ``duration_ms`` is 0.  ``status`` must be
        final (not ``started``).
        """
        _check_status(status, ACTION_FINAL_STATUSES, "final action")
        action = self._new_action(run_id, record, status=status, error=error)
        action.finished_at = action.started_at
        action.duration_ms = 0.0
        with self._write() as session:
            session.add(action)
            session.flush()
            return action.id

    def _new_action(
        self, run_id: int, record: ActionRecord, *, status: str, error: str | None
    ) -> ActionModel:
        return ActionModel(
            run_id=run_id,
            seq=record.seq,
            host=record.host,
            node=record.node,
            role=record.role,
            container=record.container,
            kind=record.kind,
            reason=_dumps(list(record.reason or [])),
            old_hash=record.old_hash,
            new_hash=record.new_hash,
            image=record.image,
            container_id=record.container_id,
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
        if f.offset > 0:
            stmt = stmt.offset(f.offset)
        with self._read() as session:
            return [ActionRow._from_model(m) for m in session.scalars(stmt)]

    def last_actions(self, hosts: list[str]) -> dict[str, ActionRow]:
        """Each host's newest action (one query, whatever the number of hosts)."""
        if not hosts:
            return {}
        newest = (
            select(func.max(ActionModel.id)).where(ActionModel.host.in_(hosts)).group_by(ActionModel.host)
        )
        with self._read() as session:
            found = session.scalars(select(ActionModel).where(ActionModel.id.in_(newest)))
            return {m.host: ActionRow._from_model(m) for m in found}

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
