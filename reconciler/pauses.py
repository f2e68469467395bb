"""Where a paused server rollout is kept: the audit database, and with a desired state in Consul KV also
Consul itself, so that the pause holds on whichever controller leads next (another controller has
another database)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Protocol

from reconciler.consul_api import Consul, ConsulError
from reconciler.store import AuditLog

log = logging.getLogger("consul_reconciler.pauses")

Pause = tuple[str, str | None, datetime]  # (reason, digest of the document paused under, since)


class RolloutPauses(Protocol):
    def get(self, cluster: str) -> Pause | None: ...
    def set(self, cluster: str, reason: str, digest: str | None) -> None: ...
    def clear(self, cluster: str) -> bool: ...


class AuditPauses:
    """The pause in this controller's audit database only (a file source: one controller)."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def get(self, cluster: str) -> Pause | None:
        return self.audit.state.rollout_pause(cluster)

    def set(self, cluster: str, reason: str, digest: str | None) -> None:
        self.audit.state.pause_rollout(cluster, reason, digest)

    def clear(self, cluster: str) -> bool:
        return self.audit.state.resume_rollout(cluster)


def pause_key_for(source_key: str) -> str:
    return f"{source_key}.pause"


class ConsulPauses(AuditPauses):
    """The pause also in Consul KV next to the desired state (``KEY.pause``): Consul's copy is the one
    every controller reads; the database's is the local record (and what ``status`` shows offline).
    Consul unreachable: the local record decides, and a pause is never lost by it."""

    def __init__(self, audit: AuditLog, consul: Consul, key: str) -> None:
        super().__init__(audit)
        self.consul = consul
        self.key = key

    def get(self, cluster: str) -> Pause | None:
        try:
            _, entry = self.consul.get(self.key)
        except ConsulError as exc:
            log.warning("cannot read the rollout pause %s (%s); using the local record", self.key, exc)
            return super().get(cluster)
        if entry is None or not entry.value:
            return super().get(cluster)
        try:
            data = json.loads(entry.value)
            return str(data["reason"]), data.get("digest"), datetime.fromisoformat(data["since"])
        except (ValueError, KeyError, TypeError):
            log.warning("the rollout pause %s is unreadable; treating the rollout as paused", self.key)
            return (f"an unreadable pause record at {self.key}", None, datetime.now(UTC))

    def set(self, cluster: str, reason: str, digest: str | None) -> None:
        super().set(cluster, reason, digest)
        since = datetime.now(UTC).isoformat()
        record = {"cluster": cluster, "reason": reason, "digest": digest, "since": since}
        try:
            self.consul.put(self.key, json.dumps(record).encode())
        except ConsulError as exc:
            log.error("the rollout pause could not be written to %s (%s); it holds here only", self.key, exc)

    def clear(self, cluster: str) -> bool:
        cleared = super().clear(cluster)
        try:
            _, entry = self.consul.get(self.key)
            if entry is not None:
                self.consul.delete(self.key)
                cleared = True
        except ConsulError as exc:
            raise ConsulError(f"the rollout pause at {self.key} could not be cleared: {exc}") from None
        return cleared


def pauses_for(source: object, audit: AuditLog) -> RolloutPauses:
    """Consul's copy too when the desired state lives in Consul KV (a ConsulSource), else the database's."""
    from reconciler.sources import ConsulSource

    if isinstance(source, ConsulSource):
        return ConsulPauses(audit, source.consul, pause_key_for(source.address.key))
    return AuditPauses(audit)


def resume_rollout(
    pauses: RolloutPauses, audit: AuditLog, cluster: str, *, source: str, digest: str | None, by: str
) -> Pause | None:
    """Clear ``cluster``'s pause and record who resumed it (a run with trigger "resume"); the pause it
    cleared, or None when none was in force. ConsulError when Consul's copy could not be cleared."""
    pause = pauses.get(cluster)
    if pause is None:
        return None
    pauses.clear(cluster)
    run_id = audit.start_run(cluster_id=cluster, trigger="resume", source=source, digest=digest)
    audit.finish_run(run_id, status="succeeded", summary={"resumed": pause[0], "by": by})
    log.info("cluster %s: rollout resumed by %s (was paused: %s)", cluster, by, pause[0])
    return pause
