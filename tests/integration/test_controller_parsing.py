"""The controller parses a document once, not on every pass (in-process, one real engine)."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

import reconciler.desired as desired_module
from desired_state.load import Loaded
from reconciler.controller import Controller, ControllerOptions
from reconciler.sources import FileSource
from reconciler.store import AuditLog
from testbed.controller_harness import wait_for
from testbed.fleet import AGENT_IMAGE_2, Engine, fleet_topology


def _agent_image(engine: Engine) -> str | None:
    with contextlib.closing(engine.client()) as client:
        for attrs in client.api.containers(all=True):
            if "/consul" in attrs["Names"] and attrs["State"] == "running":
                return str(attrs["Image"])
    return None


def test_an_unchanged_document_is_parsed_and_rendered_once(
    clean_fleet: list[Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = clean_fleet[0]
    doc: dict[str, Any] = fleet_topology([engine], tmp_path, "parse1")
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(doc))
    parsed: list[Loaded] = []
    real_load = desired_module.load_topology

    def counting_load(*args: Any, **kwargs: Any) -> Loaded:
        loaded = real_load(*args, **kwargs)
        parsed.append(loaded)
        return loaded

    monkeypatch.setattr(desired_module, "load_topology", counting_load)
    audit = AuditLog(str(tmp_path / "audit.db"))
    options = ControllerOptions(interval=0.1, jitter=0, http=None, watch_events=False, watch_file=False)
    controller = Controller(FileSource(path), audit, options)
    loop = threading.Thread(target=controller.run, daemon=True)
    loop.start()
    try:
        wait_for(lambda: controller.passes_run >= 5, 30, "five passes")
        assert len(parsed) == 1
        assert _agent_image(engine) == doc["consul"]["image"]
        # Rendered once too: the cached fleet is the object every pass used.
        assert parsed[0].fleet is parsed[0].fleet

        doc["consul"]["image"] = AGENT_IMAGE_2  # new bytes: parsed again, and followed
        path.write_text(yaml.safe_dump(doc))
        wait_for(lambda: _agent_image(engine) == AGENT_IMAGE_2, 30, "the new document to be enforced")
        passes = controller.passes_run
        wait_for(lambda: controller.passes_run >= passes + 3, 30, "three more passes")
        assert len(parsed) == 2
    finally:
        controller.stop()
        loop.join(30)
        audit.close()
