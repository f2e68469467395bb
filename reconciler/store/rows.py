"""What the store returns and takes: plain frozen rows (never ORM objects), the action record written,
the action filter, the statuses a run or action may have, and ``--since`` parsing."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final

from reconciler.durations import is_duration, parse_duration
from reconciler.store.models import ActionModel, DocumentModel, RunModel, SnapshotModel, _as_utc, _utcnow
from reconciler.vocabulary import ACTION_KINDS as ACTION_KINDS
from reconciler.vocabulary import ACTION_STATUSES as ACTION_STATUSES
from reconciler.vocabulary import RUN_STATUSES as RUN_STATUSES

RUN_FINAL_STATUSES: Final = RUN_STATUSES - {"running"}
ACTION_FINAL_STATUSES: Final = ACTION_STATUSES - {"started"}

# Where rows of one run sort (by seq): the plan's actions first (1, 2, ...), then the rows a pass
# writes about itself (an unreachable host, a blocked name), then the controller's own verdicts on
# the pass (a crash loop, a degraded host).
SEQ_PASS_NOTES: Final = 1000
SEQ_CONTROLLER_NOTES: Final = 2000


# --------------------------------------------------------------------------- the action record written


@dataclass(frozen=True)
class ActionRecord:
    """What an action row says about the action (everything but its run, status, error and times):
    what :meth:`AuditLog.start_action` and :meth:`AuditLog.record_action` write."""

    seq: int
    host: str
    kind: str
    node: str | None = None
    role: str | None = None
    container: str | None = None
    reason: list[dict[str, Any]] | None = None
    old_hash: str | None = None
    new_hash: str | None = None
    image: str | None = None
    container_id: str | None = None


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
    ``limit`` caps the number of rows (newest first); ``None`` means no cap; ``offset`` skips rows first.
    """

    host: str | None = None
    node: str | None = None
    kind: str | None = None
    status: str | None = None
    since: datetime | None = None
    run_id: int | None = None
    limit: int | None = 100
    offset: int = 0  # rows skipped first (a page of the console's audit)


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


# A controller that has not written its heartbeat for this many of its heartbeat periods is taken to
# be gone (killed, its host down): its host states are history, not the present.
MISSED_HEARTBEATS: Final = 3


@dataclass(frozen=True)
class ControllerRow:
    """A controller process and its heartbeat (``status`` reads it)."""

    identity: str
    source: str
    version: str
    heartbeat_s: float
    started_at: datetime
    last_seen: datetime
    stopped_at: datetime | None

    def running(self, now: datetime) -> bool:
        """Alive as of ``now``: not stopped, and its last heartbeat recent enough."""
        late = (_as_utc(now) - _as_utc(self.last_seen)).total_seconds()
        return self.stopped_at is None and late <= MISSED_HEARTBEATS * self.heartbeat_s

    def to_dict(self) -> dict[str, Any]:
        return _row_dict(self)


@dataclass(frozen=True)
class SnapshotRow:
    """A raft snapshot the controller took (``snapshots`` lists them)."""

    id: int
    cluster_id: str
    run_id: int | None
    action_id: int | None
    taken_at: datetime
    path: str
    size: int
    raft_index: int
    sha256: str
    leader: str | None
    pruned_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return _row_dict(self)

    @classmethod
    def _from_model(cls, m: SnapshotModel) -> SnapshotRow:
        return cls(
            m.id,
            m.cluster_id,
            m.run_id,
            m.action_id,
            m.taken_at,
            m.path,
            m.size,
            m.raft_index,
            m.sha256,
            m.leader,
            m.pruned_at,
        )


def _document(m: DocumentModel) -> DocumentRow:
    return DocumentRow(m.id, m.source, m.digest, m.cluster_id, m.first_seen, m.last_applied, m.document)


# --------------------------------------------------------------------------- --since parsing

_SINCE_FORMS: Final = (
    "a relative age such as 90s, 15m, 2h, 1h30m, 3d or 1w (the duration syntax of every option), "
    "or an ISO 8601 date or date/time such as 2024-05-01, 2024-05-01T12:30:00 or "
    "2024-05-01T12:30:00+02:00 (no offset means UTC)"
)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """Parse a ``--since`` value into an aware UTC datetime.

    A duration with units (``"90s"``, ``"15m"``, ``"1h30m"``, ``"3d"``, ``"1w"``: see
    :mod:`reconciler.durations`) is an age relative to ``now`` (default: the current time); anything
    else must be an ISO 8601 date or date/time, a naive one being UTC.  Raises :class:`ValueError`
    naming the accepted forms.
    """
    value = text.strip()
    if not value:
        raise ValueError(f"empty time: expected {_SINCE_FORMS}")
    if any(c.isalpha() for c in value) and is_duration(value):
        reference = _as_utc(now) if now is not None else _utcnow()
        try:
            return reference - parse_duration(value)
        except (OverflowError, ValueError):
            raise ValueError(f"time {text!r} is too far in the past") from None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"invalid time {text!r}: expected {_SINCE_FORMS}") from None
    try:
        return _as_utc(parsed)
    except OverflowError:
        raise ValueError(f"time {text!r} is outside the years 1 to 9999 in UTC") from None
