"""Where the desired state comes from. Issue #4 adds Consul KV beside the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class SourceError(Exception):
    """The desired state could not be read (not: it was read and is invalid)."""


@dataclass(frozen=True)
class FileSource:
    path: Path

    def describe(self) -> str:
        return f"file:{self.path}"

    def read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            raise SourceError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise SourceError(f"{self.path}: is a directory; give the topology file") from None
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read: {exc.strerror or exc}") from None

    @property
    def fmt(self) -> str | None:
        return "json" if self.path.suffix.lower() == ".json" else None
