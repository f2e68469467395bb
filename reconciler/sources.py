"""Where the desired state comes from: a local file, or a key in Consul KV.

A source reads the document's bytes (raising SourceError when it cannot: unreachable,
missing, empty) and makes a watcher that asks for a pass when the document changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from desired_state.load import MAX_DOCUMENT_BYTES
from desired_state.readfile import UnreadableFile, read_bounded
from reconciler.backoff import Reconnect
from reconciler.consul_api import Consul, ConsulError
from reconciler.consul_settings import ConsulAddress, is_consul_url
from reconciler.triggers import FileWatcher

log = logging.getLogger("consul_reconciler.sources")


class SourceError(Exception):
    """The desired state could not be read (not: it was read and is invalid)."""


class Watcher(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class FileSource:
    path: Path

    def describe(self) -> str:
        return f"file:{self.path}"

    def read(self) -> bytes:
        try:
            return read_bounded(self.path, MAX_DOCUMENT_BYTES)
        except UnreadableFile as exc:
            raise SourceError(f"{exc}; give the topology file") from None
        except FileNotFoundError:
            raise SourceError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise SourceError(f"{self.path}: is a directory; give the topology file") from None
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read: {exc.strerror or exc}") from None

    @property
    def fmt(self) -> str | None:
        return "json" if self.path.suffix.lower() == ".json" else None

    @property
    def base(self) -> Path:
        """The file's folder: relative Docker TLS paths in it are taken from there."""
        return self.path.absolute().parent

    def watcher(self, on_change: Callable[[], None]) -> Watcher:
        return FileWatcher(self.path, on_change)


class ConsulSource:
    base: Path | None = None  # a document in KV has no folder: relative paths are the working directory's

    def __init__(self, address: ConsulAddress, timeout: float = 5.0) -> None:
        self.address = address
        self.consul = Consul(address, timeout=timeout)

    def describe(self) -> str:
        return self.address.url()

    @property
    def fmt(self) -> str | None:
        return None  # sniffed: JSON when it starts with '{', else YAML

    def read(self) -> bytes:
        try:
            _, entry = self.consul.get(self.address.key)
        except ConsulError as exc:
            raise SourceError(str(exc)) from None
        if entry is None:
            raise SourceError(f"key {self.address.key} does not exist in {self.consul.where()}")
        if not entry.value or not entry.value.strip():
            raise SourceError(f"key {self.address.key} in {self.consul.where()} is empty")
        return entry.value

    def watcher(self, on_change: Callable[[], None]) -> Watcher:
        return KVWatcher(self.consul, self.address.key, on_change)


def open_source(spec: str, *, ca: str | None = None, token: str | None = None) -> FileSource | ConsulSource:
    """``consul://HOST:PORT/KEY`` / ``consul+https://...`` or a file path."""
    if is_consul_url(spec):
        return ConsulSource(ConsulAddress.parse(spec, ca=ca, token=token))
    if "://" in spec:
        raise ValueError(f"{spec!r}: a source is a file path or consul://HOST:PORT/KEY")
    return FileSource(Path(spec))


class KVWatcher(threading.Thread):
    """Watches one key with blocking queries and asks for a pass when it changes.

    As Consul documents: the index is reset when it goes backwards (a restored or new
    cluster), and a failing Consul is retried with capped exponential backoff plus jitter,
    never in a hot loop."""

    def __init__(
        self,
        consul: Consul,
        key: str,
        on_change: Callable[[], None],
        wait: str = "30s",
        max_delay: float = 30.0,
    ) -> None:
        super().__init__(name="kv-watcher", daemon=True)
        self._consul = consul
        self._key = key
        self._on_change = on_change
        self._wait = wait
        self._wait_seconds = _seconds(wait)
        self._backoff = Reconnect(first=0.5, cap=max_delay, jitter=0.2)
        self._halt = threading.Event()
        self.healthy = threading.Event()

    def run(self) -> None:
        index = 0
        modify: int | None = None
        while not self._halt.is_set():
            asked = time.monotonic()
            try:
                new_index, entry = self._consul.get(self._key, index=index or None, wait=self._wait)
            except ConsulError as exc:
                if self.healthy.is_set():
                    log.warning("watching %s: %s; retrying with backoff", self._key, exc)
                self.healthy.clear()
                self._on_change()  # a pass notices (and reports) that the source is gone
                if self._halt.wait(self._backoff.next_delay()):
                    return
                index = 0
                continue
            self._backoff.reset()
            if not self.healthy.is_set():
                self.healthy.set()
                self._on_change()  # back: look again
            current = entry.modify_index if entry else None
            # the index went backwards (a restored or new cluster): start over, as Consul's docs ask
            unchanged = new_index == index
            index = 0 if new_index < index else max(new_index, 1)
            if current != modify:
                if modify is not None:
                    log.info(
                        "desired state key %s changed (ModifyIndex %s -> %s)", self._key, modify, current
                    )
                modify = current
                self._on_change()
            elif unchanged and time.monotonic() - asked < self._wait_seconds / 2:
                # an early answer without change (a Consul that does not hold the query): at most one
                # such request a second, never a hot loop
                self._halt.wait(max(0.0, 1.0 - (time.monotonic() - asked)))

    def stop(self) -> None:
        self._halt.set()


def _seconds(duration: str) -> float:
    """A Go duration as Consul takes it for ``wait`` ("30s", "1m", "500ms") in seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit):
            return float(duration[: -len(unit)]) * units[unit]
    return float(duration)
