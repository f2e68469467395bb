"""Which desired document is enforced: the source's while it is readable and valid, else the last valid
one; a document refused for a dangerous change leaves the last applied one enforced (the controller
asks :meth:`DesiredState.previous`). A rejection is audited once per document.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from desired_state.configfiles import attach
from desired_state.load import Loaded, TopologyError, digest_of, load_topology
from reconciler.loop import Requeue
from reconciler.metrics import Metrics
from reconciler.sources import ConsulSource, FileSource, SourceError
from reconciler.store import AuditLog, DocumentRow

log = logging.getLogger("consul_reconciler.controller")

# A desired-state source that could not be read is read again after 1, 2, 4 ... s (at most 30 s): its
# watcher may not see the recovery (a blocking query held since before a leaderless spell answers
# only at the end of its wait, and unchanged), and the resync interval may be minutes.
SOURCE_RETRY_FIRST = 1.0
SOURCE_RETRY_MAX = 30.0


def load_kept(row: DocumentRow) -> Loaded:
    """A document kept in the audit database (the last applied one), loaded and validated again with
    its config files attached; TopologyError when it no longer validates."""
    base = Path(row.source.removeprefix("file:")).parent if row.source.startswith("file:") else None
    return attach(load_topology(row.document.encode(), source=f"kept document {row.digest[:12]}", base=base))


class DesiredState:
    """The document to enforce: the source's while it is readable and valid, else the last valid one
    (kept in memory, and in the audit database across restarts); a rejection is audited once."""

    def __init__(
        self,
        source: FileSource | ConsulSource,
        audit: AuditLog,
        metrics: Metrics,
        identity: str,
        standby: Callable[[], bool],
    ) -> None:
        self.source = source
        self.audit = audit
        self.metrics = metrics
        self.identity = identity
        self.standby = standby  # a standby under leader election audits no rejection
        self.source_error: str | None = None
        self.source_failures = 0
        self.enforcing_kept: str | None = None  # digest of a kept document enforced since start-up
        self.kept_digest: str | None = None
        self.last_valid: Loaded | None = None
        self.applied: Loaded | None = None  # the document of the last pass that was not refused
        self.rejected_digest: str | None = None

    def keep(self, loaded: Loaded) -> None:
        """Remember the applied document: the last known good, even across restarts."""
        self.applied = loaded
        if loaded.digest != self.kept_digest:
            self.audit.state.keep_document(
                source=self.source.describe(),
                digest=loaded.digest,
                cluster_id=loaded.topology.cluster,
                document=loaded.text,
            )
            self.kept_digest = loaded.digest

    def previous(self) -> Loaded | None:
        """The document applied last (in memory, else the one kept in the database), to enforce while
        a newer one is refused; None when there is none or it no longer validates."""
        if self.applied is not None:
            return self.applied
        row = self.audit.state.last_document(self.source.describe())
        if row is None:
            return None
        try:
            return load_kept(row)
        except TopologyError:
            return None

    def requeues(self) -> list[Requeue]:
        """After :meth:`load`: a read again of a source that could not be read, sooner after the
        first failure than after many (1 s doubling to 30 s)."""
        if self.source_error is None:
            return []
        retry = min(SOURCE_RETRY_MAX, SOURCE_RETRY_FIRST * 2 ** (self.source_failures - 1))
        return [Requeue("source-retry", retry)]

    def load(self) -> Loaded | None:
        """The desired state to enforce: the source's if readable and valid, else the last valid one
        (from memory, or the kept document in the database when the controller just started)."""
        try:
            data = self.source.read()
        except SourceError as exc:
            self.source_error = str(exc)
            self.source_failures += 1
            self.metrics.desired_state_source_up.set(0)
            self.reject(digest_of(str(exc).encode()), str(exc))
            return self.last_valid or self.kept()
        self.source_error = None
        self.source_failures = 0
        self.metrics.desired_state_source_up.set(1)
        digest = digest_of(data)
        try:
            if self.last_valid is not None and digest == self.last_valid.digest:
                # The same bytes as the document in force: parsing and validating them again would
                # give the same result (a 10,000-host YAML document takes seconds to parse), and the
                # rendered fleet is kept with it, unless a config file it names was edited.
                loaded = attach(self.last_valid)
            else:
                loaded = attach(
                    load_topology(
                        data, source=self.source.describe(), fmt=self.source.fmt, base=self.source.base
                    )
                )
                log.info("desired state %s (digest %s) accepted", self.source.describe(), loaded.digest[:12])
                for warning in loaded.warnings:  # once per document, as validate and plan print them
                    log.warning("desired state %s: %s", loaded.digest[:12], warning)
        except TopologyError as exc:
            reason = "; ".join(str(i) for i in exc.issues)
            self.reject(digest_of(data + reason.encode()), reason)
            return self.last_valid or self.kept()
        self.last_valid = loaded
        self.enforcing_kept = None
        self.rejected_digest = None
        self.metrics.desired_state_valid.set(1)
        return loaded

    def kept(self) -> Loaded | None:
        row = self.audit.state.last_document(self.source.describe())
        if row is None:
            return None
        try:
            loaded = load_kept(row)
        except TopologyError as exc:
            log.error(
                "the kept document %s no longer validates (%s); nothing is enforced",
                row.digest[:12],
                "; ".join(str(i) for i in exc.issues),
            )
            return None
        log.warning(
            "enforcing the kept document %s (applied %s) until the source is readable and valid",
            row.digest[:12],
            row.last_applied.isoformat(timespec="seconds"),
        )
        self.last_valid = loaded
        self.enforcing_kept = loaded.digest
        return loaded

    def reject(self, digest: str, reason: str) -> None:
        self.metrics.desired_state_valid.set(0)
        keeping = (
            f"keeping the last valid state (digest {self.last_valid.digest[:12]})"
            if self.last_valid
            else "no valid state yet: nothing is enforced"
        )
        if digest == self.rejected_digest:
            return  # audited once per distinct document
        if self.standby():
            self.rejected_digest = digest
            log.error("desired state rejected: %s (a standby: not audited)", reason)
            return
        self.rejected_digest = digest
        log.error("desired state rejected: %s; %s", reason, keeping)
        cluster = self.last_valid.topology.cluster if self.last_valid else "(unknown)"
        run_id = self.audit.start_run(
            cluster_id=cluster,
            trigger="desired-state",
            source=self.source.describe(),
            digest=digest,
            controller=self.identity,
        )
        self.audit.finish_run(run_id, status="refused", error=f"desired state rejected: {reason}; {keeping}")
