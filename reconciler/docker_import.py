"""docker-py, imported for the package with paramiko deferred: the modules that use Docker take it from
here (``from reconciler.docker_import import docker``), so importing the pure core (the plan, the
desired state) leaves ``sys.modules`` alone.

docker-py imports paramiko (and with it the cryptography bindings) as soon as ``docker`` is imported,
for ssh:// endpoints: about 15 MB of resident memory in a controller that may never use ssh. Deferred,
paramiko loads the first time an ssh:// engine is connected. (The standard library's LazyLoader does not
help here: an ``import`` statement touches the module's ``__spec__``, which loads it.)
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import types
from typing import Any

_LOADING = threading.RLock()


class _DeferredModule(types.ModuleType):
    """Stands in for a module in sys.modules until one of its attributes is first used."""

    def __getattr__(self, attr: str) -> Any:
        # A pass connects its hosts in parallel, so the first use may come from several threads at
        # once: one loads the module, the others wait for it whole (not the half-initialised module
        # that sys.modules holds while it loads).
        with _LOADING:
            real = sys.modules.get(self.__name__)
            if real is self or real is None:
                sys.modules.pop(self.__name__, None)
                real = importlib.import_module(self.__name__)
        return getattr(real, attr)


def _defer_import(name: str) -> None:
    """Let ``import name`` succeed at once and load the module when it is first used."""
    if name in sys.modules or importlib.util.find_spec(name) is None:
        return
    stub = _DeferredModule(name)
    stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = stub


_defer_import("paramiko")

# After the deferral, which these need: docker imports paramiko when it is imported.
import docker  # noqa: E402
import docker.errors  # noqa: E402
import docker.tls  # noqa: E402
import docker.utils  # noqa: E402
from docker.models.containers import Container  # noqa: E402
from docker.types.daemon import CancellableStream  # noqa: E402

__all__ = ["CancellableStream", "Container", "docker"]
