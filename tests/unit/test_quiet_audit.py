"""A condition that persists is audited when it starts, not once a pass (real SQLite; the host's engine
is a socket path where nothing listens, so it is really unreachable)."""

from __future__ import annotations

from pathlib import Path

from desired_state.configfiles import attach
from desired_state.load import load_topology
from reconciler.engines import Connections
from reconciler.one_pass import PassOptions, PassResult, run_pass
from reconciler.store import AuditLog

TOPOLOGY = b"""
cluster: quiet
hosts:
  - {name: h1, docker: 'unix:///nonexistent/docker.sock', advertise: 127.0.10.1, role: server}
"""


def test_an_unreachable_host_is_one_row_when_it_starts_not_one_a_pass(tmp_path: Path) -> None:
    loaded = attach(load_topology(TOPOLOGY))
    audit = AuditLog(str(tmp_path / "audit.db"))
    connections = Connections()

    def one_pass(known: frozenset[str], deferred: dict[str, str] | None = None) -> PassResult:
        return run_pass(
            loaded,
            source="t.yaml",
            connections=connections,
            audit=audit,
            options=PassOptions(),
            deferred=deferred,
            known_troubles=known,
        )

    try:
        first = one_pass(frozenset())
        assert first.run_id is not None and first.troubles == {"h1"} and not first.ok
        (row,) = audit.actions()
        assert (row.kind, row.host, row.status) == ("observe", "h1", "failed")
        again = one_pass(first.troubles)  # still unreachable: nothing new to record
        backing_off = one_pass(again.troubles, deferred={"h1": "backing off"})  # left alone meanwhile
        assert again.run_id is None and backing_off.run_id is None
        assert again.troubles == backing_off.troubles == {"h1"} and not again.ok
        assert len(audit.runs()) == 1 and len(audit.actions()) == 1
        fresh = one_pass(frozenset())  # a controller that just started knows of no trouble: it records
        assert fresh.run_id is not None and len(audit.runs()) == 2
    finally:
        connections.close()
        audit.close()
