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
TWO_HOSTS = (
    TOPOLOGY
    + b"""\
  - {name: h2, docker: 'unix:///nonexistent/docker2.sock', advertise: 127.0.10.2, role: client}
"""
)


class Passes:
    """run_pass over a topology whose engines are sockets where nothing listens, on real SQLite."""

    def __init__(self, document: bytes, tmp_path: Path) -> None:
        self.loaded = attach(load_topology(document))
        self.audit = AuditLog(str(tmp_path / "audit.db"))
        self.connections = Connections()

    def __call__(self, known: frozenset[str], deferred: dict[str, str] | None = None) -> PassResult:
        return run_pass(
            self.loaded,
            source="t.yaml",
            connections=self.connections,
            audit=self.audit,
            options=PassOptions(),
            deferred=deferred,
            known_troubles=known,
        )

    def observe_rows(self) -> list[tuple[str, str]]:
        return [(r.host, r.status) for r in self.audit.actions() if r.kind == "observe"]

    def close(self) -> None:
        self.connections.close()
        self.audit.close()


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


def test_another_hosts_new_trouble_does_not_repeat_a_known_one(tmp_path: Path) -> None:
    # Seen in the operator walk: host1 failing too made the pass a run, and host3, unreachable all
    # along, got a second "could not be observed" row in it.
    one_pass = Passes(TWO_HOSTS, tmp_path)
    try:
        first = one_pass(frozenset(), deferred={"h2": "backing off"})  # h2 not tried yet
        assert one_pass.observe_rows() == [("h1", "failed")]
        second = one_pass(first.troubles)  # both tried: h2 is new, h1 is not
        assert second.run_id is not None and second.troubles == {"h1", "h2"}
        assert sorted(one_pass.observe_rows()) == [("h1", "failed"), ("h2", "failed")]
    finally:
        one_pass.close()


def test_a_host_backing_off_that_turns_out_unreachable_is_recorded(tmp_path: Path) -> None:
    # Seen in the operator walk: a host left alone while it backed off from a failed action, then
    # tried and found unreachable, was never audited as unreachable (its backoff counted as known).
    one_pass = Passes(TOPOLOGY, tmp_path)
    try:
        waiting = one_pass(frozenset(), deferred={"h1": "backing off after a failed start"})
        assert waiting.run_id is None and waiting.troubles == frozenset()  # its backoff is already audited
        tried = one_pass(waiting.troubles)
        assert tried.run_id is not None and one_pass.observe_rows() == [("h1", "failed")]
    finally:
        one_pass.close()
