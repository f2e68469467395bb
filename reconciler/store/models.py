"""The ORM models of the audit schema (owned by the Alembic migrations in reconciler/migrations:
these never create tables). Time stamps are aware UTC datetimes; SQLite keeps them as naive UTC text."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

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


class AdoptionModel(Base):
    """A container started by hand, taken over in place: ours by its id (it carries no label), with the
    spec it matched when it was adopted."""

    __tablename__ = "adoptions"

    cluster_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    container: Mapped[str] = mapped_column(String(255), primary_key=True)
    container_id: Mapped[str] = mapped_column(String(128))
    spec_hash: Mapped[str] = mapped_column(String(64))
    record: Mapped[str] = mapped_column(Text)
    adopted_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SnapshotModel(Base):
    """A raft snapshot taken before a server change and kept on the management host (``pruned_at`` once
    its file was deleted to keep the newest N). No foreign key: pruning old runs leaves it."""

    __tablename__ = "snapshots"
    __table_args__ = (Index("ix_snapshots_cluster_id_taken_at", "cluster_id", "taken_at"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    cluster_id: Mapped[str] = mapped_column(String(255))
    run_id: Mapped[int | None] = mapped_column(_BigId)
    action_id: Mapped[int | None] = mapped_column(_BigId)
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime())
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    raft_index: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    leader: Mapped[str | None] = mapped_column(String(255))
    pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ControllerModel(Base):
    """A controller process (``host:pid``) and its heartbeat: ``status`` tells from ``last_seen`` (and
    ``heartbeat_s``, how often it writes) whether it still runs; ``stopped_at`` once it stopped cleanly."""

    __tablename__ = "controllers"

    identity: Mapped[str] = mapped_column(String(255), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    version: Mapped[str] = mapped_column(String(64))
    heartbeat_s: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
