"""The demo never reaches for a registry unless asked (`--pull`): its engine is reached through a proxy
that records every Docker API request (testbed/dockerproxy.py), on a real engine with no registry."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from testbed.dockerproxy import DockerProxy
from testbed.fleet import STANDIN_CONSUL_1, STANDIN_REGISTRATOR_1, Engine

ROOT = Path(__file__).resolve().parents[2]


def _demo() -> ModuleType:
    before = dict(os.environ)
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # importing it changes nothing for the rest of the session (the fleet's folder is read from it)
    assert dict(os.environ) == before
    return module


@pytest.fixture
def proxy(clean_fleet: list[Engine]) -> Iterator[DockerProxy]:
    engine = clean_fleet[0]
    with DockerProxy(engine.socket_path, Path(f"/tmp/crdemo-{os.getpid()}-{time.monotonic_ns()}.sock")) as p:
        yield p


def test_the_demo_pulls_nothing_unless_asked(
    clean_fleet: list[Engine], proxy: DockerProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = _demo()
    images = demo.images([proxy.url], clean_fleet[:1])
    assert images == (STANDIN_CONSUL_1, STANDIN_REGISTRATOR_1)
    assert proxy.did("POST", r"/images/create") == []  # no pull, no registry
    assert proxy.did("GET", r"/images/hashicorp/consul") != []  # it looked for the real image locally
    assert "not pulling them (--pull does)" in capsys.readouterr().out

    # Asked, it pulls: the proxy takes the pull itself and closes without an answer (a registry that
    # cannot be reached), so the engine is never sent to a public address; the demo falls back.
    proxy.drop("POST", r"/images/create", times=None)
    asked = demo.images([proxy.url], clean_fleet[:1], pull=True)
    assert asked == (STANDIN_CONSUL_1, STANDIN_REGISTRATOR_1)
    assert proxy.did("POST", r"/images/create") != []  # asked: it tried the registry
    assert "no registry reachable" in capsys.readouterr().out
