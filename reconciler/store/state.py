"""The controller's state kept beside the audit log, in the same database: the hosts it has applied
to (so their containers can be removed once they leave the topology), each host's state after the last
pass (read by ``status``), the valid documents it applied (last known good) and rollout pauses."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from reconciler.actual import Adoption
from reconciler.store.database import Database
from reconciler.store.models import (
    AdoptionModel,
    ControllerModel,
    DocumentModel,
    HostStateModel,
    KnownHostModel,
    RolloutPauseModel,
)
from reconciler.store.rows import ControllerRow, DocumentRow, HostState, _document, _dumps


class ControllerState:
    """Reads and writes of the controller's state, each in its own short transaction of ``db`` (so they
    share its engine, its clock and its queue of outcomes not yet written).  Reach it as
    ``AuditLog.state``, or build one on any :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def __repr__(self) -> str:
        return f"ControllerState({self._db!r})"

    # -- known hosts

    def remember_host(self, cluster_id: str, host: str, endpoint: dict[str, Any]) -> None:
        """Insert or update the endpoint used to reach ``host`` (portable upsert)."""
        self.remember_hosts(cluster_id, {host: endpoint})

    def remember_hosts(self, cluster_id: str, endpoints: Mapping[str, dict[str, Any]]) -> None:
        """Insert or update the endpoint of each host of ``endpoints``, all in one transaction (a pass
        that acts on a thousand hosts writes one commit, not a thousand)."""
        if not endpoints:
            return
        encoded = {host: _dumps(endpoint) for host, endpoint in endpoints.items()}
        for _attempt in range(3):
            now = self._db._now()
            try:
                with self._db._write() as session:
                    for host, text in encoded.items():
                        result = session.execute(
                            update(KnownHostModel)
                            .where(KnownHostModel.cluster_id == cluster_id, KnownHostModel.host == host)
                            .values(endpoint=text, last_seen=now)
                            .execution_options(synchronize_session=False)
                        )
                        if not getattr(result, "rowcount", 0):
                            session.add(
                                KnownHostModel(
                                    cluster_id=cluster_id,
                                    host=host,
                                    endpoint=text,
                                    first_seen=now,
                                    last_seen=now,
                                )
                            )
                return
            except IntegrityError:
                # Another writer inserted one of these hosts between our UPDATE and INSERT
                # (possible on servers with row-level locking); the UPDATE wins next time.
                continue
        hosts = ", ".join(sorted(encoded)[:5]) + (", ..." if len(encoded) > 5 else "")
        raise RuntimeError(f"could not record known host(s) {hosts} for cluster {cluster_id!r}")

    def forget_host(self, cluster_id: str, host: str) -> None:
        with self._db._write() as session:
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
        with self._db._read() as session:
            return {host: _endpoint(endpoint) for host, endpoint in session.execute(stmt)}

    # -- host states (written by the controller after each pass, read by `status`)

    def set_host_states(self, cluster_id: str, states: list[HostState], *, touch: bool = False) -> None:
        """Write ``states``; ``touch``: every other host of the cluster is as last written, as of now
        (one statement, however many hosts: a pass writes only the hosts whose state changed)."""
        now = self._db._now()
        with self._db._write() as session:
            if touch:
                session.execute(
                    update(HostStateModel)
                    .where(HostStateModel.cluster_id == cluster_id)
                    .values(updated_at=now)
                    .execution_options(synchronize_session=False)
                )
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
        with self._db._read() as session:
            return {
                m.host: HostState(m.host, m.state, m.failures, m.retry_at, m.drift, m.detail, m.updated_at)
                for m in session.scalars(stmt)
            }

    # -- controllers and their heartbeats

    def controller_beat(self, identity: str, *, source: str, version: str, heartbeat_s: float) -> None:
        """``identity`` is alive now (the first beat of a process records its start)."""
        now = self._db._now()
        with self._db._write() as session:
            found = session.get(ControllerModel, identity)
            if found is None or found.stopped_at is not None:
                if found is not None:
                    session.delete(found)  # the same host:pid again (a pid reused): a new process
                    session.flush()
                session.add(
                    ControllerModel(
                        identity=identity,
                        source=source,
                        version=version,
                        heartbeat_s=heartbeat_s,
                        started_at=now,
                        last_seen=now,
                        stopped_at=None,
                    )
                )
            else:
                found.last_seen = now

    def controller_stopped(self, identity: str) -> None:
        now = self._db._now()
        with self._db._write() as session:
            session.execute(
                update(ControllerModel)
                .where(ControllerModel.identity == identity)
                .values(stopped_at=now, last_seen=now)
                .execution_options(synchronize_session=False)
            )

    def controllers(self) -> list[ControllerRow]:
        """Every controller recorded, the most recently seen first."""
        stmt = select(ControllerModel).order_by(ControllerModel.last_seen.desc())
        with self._db._read() as session:
            return [
                ControllerRow(
                    m.identity, m.source, m.version, m.heartbeat_s, m.started_at, m.last_seen, m.stopped_at
                )
                for m in session.scalars(stmt)
            ]

    # -- desired documents (last known good)

    def keep_document(self, *, source: str, digest: str, cluster_id: str, document: str) -> None:
        """Remember a valid document that was applied (secrets are references in it, never values)."""
        now = self._db._now()
        with self._db._write() as session:
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
        with self._db._read() as session:
            found = session.scalars(stmt).first()
            return None if found is None else _document(found)

    def documents(self, source: str | None = None, limit: int = 50) -> list[DocumentRow]:
        """Kept documents, newest first."""
        stmt = select(DocumentModel).order_by(DocumentModel.first_seen.desc(), DocumentModel.id.desc())
        if source is not None:
            stmt = stmt.where(DocumentModel.source == source)
        with self._db._read() as session:
            return [_document(m) for m in session.scalars(stmt.limit(limit))]

    def find_document(self, ref: str) -> DocumentRow:
        """A kept document by id (``12``) or digest prefix (``3fa2c1``); KeyError names what was wrong."""
        with self._db._read() as session:
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
        with self._db._write() as session:
            session.execute(delete(RolloutPauseModel).where(RolloutPauseModel.cluster_id == cluster_id))
            session.add(
                RolloutPauseModel(cluster_id=cluster_id, reason=reason, digest=digest, since=self._db._now())
            )

    def rollout_pause(self, cluster_id: str) -> tuple[str, str | None, datetime] | None:
        """(reason, digest, since) of the pause in force for ``cluster_id``, if any."""
        with self._db._read() as session:
            found = session.get(RolloutPauseModel, cluster_id)
            return None if found is None else (found.reason, found.digest, found.since)

    def resume_rollout(self, cluster_id: str) -> bool:
        with self._db._write() as session:
            result = session.execute(
                delete(RolloutPauseModel).where(RolloutPauseModel.cluster_id == cluster_id)
            )
            return bool(getattr(result, "rowcount", 0))

    # -- adoptions in place (containers started by hand, ours by their id)

    def adopt(self, cluster_id: str, host: str, container: str, adoption: Adoption) -> None:
        """Record that ``container`` on ``host`` (by its id) is taken over as it runs."""
        with self._db._write() as session:
            session.execute(
                delete(AdoptionModel).where(
                    AdoptionModel.cluster_id == cluster_id,
                    AdoptionModel.host == host,
                    AdoptionModel.container == container,
                )
            )
            session.add(
                AdoptionModel(
                    cluster_id=cluster_id,
                    host=host,
                    container=container,
                    container_id=adoption.container_id,
                    spec_hash=adoption.spec_hash,
                    record=_dumps(adoption.record),
                    adopted_at=self._db._now(),
                )
            )

    def adoptions(self, cluster_id: str) -> dict[tuple[str, str], Adoption]:
        """(host, container name) -> its adoption, for every container adopted in place in the cluster."""
        stmt = select(AdoptionModel).where(AdoptionModel.cluster_id == cluster_id)
        with self._db._read() as session:
            return {
                (m.host, m.container): Adoption(m.container_id, m.spec_hash, json.loads(m.record))
                for m in session.scalars(stmt)
            }


@functools.lru_cache(maxsize=65536)
def _endpoint_cached(text: str) -> dict[str, Any]:
    return dict(json.loads(text))


def _endpoint(text: str) -> dict[str, Any]:
    """A known host's endpoint record, parsed once per distinct text (every pass reads them all)."""
    return dict(_endpoint_cached(text))
