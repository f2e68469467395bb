"""``defer_import(name)``: ``import name`` succeeds at once, and the module loads when one of its attributes
is first used. For the libraries a process may never use: paramiko (ssh:// engines only,
reconciler/docker_import.py) and python-consul (a consul:// source and the server health gates only,
reconciler/consul_api.py). A `plan` or `apply` of a file source whose pass touches no server loads
neither. (The standard library's LazyLoader does not help here: an ``import`` statement touches the
module's ``__spec__``, which loads it.)
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


def defer_import(name: str) -> None:
    """Let ``import name`` succeed at once and load the module when it is first used."""
    if name in sys.modules or importlib.util.find_spec(name) is None:
        return
    stub = _DeferredModule(name)
    stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = stub
