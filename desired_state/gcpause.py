"""The cyclic garbage collector paused while a document is read and rendered.

A 10,000-host document becomes hundreds of thousands of small objects (YAML nodes, dicts, pydantic
models, rendered specs), none of them in a reference cycle; every 700 allocations CPython's collector
walks the young ones again looking for cycles they do not form. Reference counting still frees
everything at once; a cycle made meanwhile is found by the next collection after. Nesting and other
threads are safe: the collector is enabled again by whoever found it enabled.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
