"""Words and limits the command line names in its help, kept here, free of imports, so that building the
command line (``--help``) loads neither the plan's models nor the audit database: the plan's removal
limit, and the kinds and statuses an audit row may have. ``reconciler.plan`` and ``reconciler.store``
take them from here."""

from __future__ import annotations

from typing import Final

DEFAULT_MAX_REMOVALS: Final = 4  # a pass that would remove more containers is refused

RUN_STATUSES: Final = frozenset({"running", "succeeded", "failed", "interrupted", "refused", "waiting"})
ACTION_STATUSES: Final = frozenset({"started", "succeeded", "failed", "skipped", "interrupted", "waiting"})
# Every kind an action row may have: the plan's (reconciler.plan.Kind), a pass's notes (observe: a host
# that could not be observed, or answers again), the snapshot before a server change, and the
# controller's verdicts (backoff: a host that keeps failing; degraded: a crash loop).
ACTION_KINDS: Final = frozenset(
    {"create", "replace", "start", "remove", "blocked", "adopt", "adopt-in-place"}
    | {"observe", "snapshot", "backoff", "degraded"}
)
