"""The collector paused while a document is read (desired_state/gcpause.py): off inside, on after,
whatever happens inside, nested or not; and a document still loads with it."""

from __future__ import annotations

import gc

import pytest

from bench.scale import topology_text
from desired_state.gcpause import collector_paused
from desired_state.load import load_topology


def test_paused_inside_enabled_after_even_on_error_and_nested() -> None:
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner one found it paused: leaves it so
        raise RuntimeError("inside")
    assert gc.isenabled()


def test_a_document_loads_and_renders_with_the_collector_on_after() -> None:
    loaded = load_topology(topology_text(50), source="50 hosts")
    assert len(loaded.fleet.hosts) == 50
    assert gc.isenabled()
