"""Figures for the benchmarks: repeated samples summarised as median (min..max), and the machine."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Samples:
    """Repeated measurements of one figure, in ``unit`` (``s``, ``ms``, ``MB``, ``rows/s``, ...)."""

    unit: str
    values: tuple[float, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, unit: str, values: list[float] | tuple[float, ...]) -> Samples:
        if not values:
            raise ValueError("a figure needs at least one sample")
        return cls(unit, tuple(values))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def text(self, digits: int | None = None) -> str:
        """``1.23 s (1.10..1.40, n=5)``: median, then min..max and the number of samples."""
        fmt = _fmt(self.median, digits)
        return f"{fmt} {self.unit} ({_fmt(self.min, digits)}..{_fmt(self.max, digits)}, n={len(self.values)})"

    def as_json(self) -> dict[str, object]:
        return {
            "unit": self.unit,
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "samples": list(self.values),
        }


def ratio(peer: Samples, ours: Samples) -> float:
    """How many times ``ours`` is faster (smaller) than ``peer``, median against median."""
    return peer.median / ours.median if ours.median > 0 else float("inf")


def _fmt(value: float, digits: int | None) -> str:
    if digits is not None:
        return f"{value:.{digits}f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def machine() -> dict[str, str]:
    """What the figures ran on: CPU model and count, memory, kernel, Python, Docker."""
    cpu = _proc_field("/proc/cpuinfo", "model name", "unknown CPU")
    mem_kib = _proc_field("/proc/meminfo", "MemTotal", "0 kB").split()[0]
    mem_gib = f"{int(mem_kib) / 1024 / 1024:.1f}"
    try:
        dockerd = subprocess.run(
            ["dockerd", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except OSError:
        dockerd = "dockerd not found"
    return {
        "cpu": f"{cpu} x {os.cpu_count()}",
        "memory": f"{mem_gib} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker": dockerd,
    }


def _proc_field(path: str, key: str, default: str) -> str:
    """The value of the first ``key: value`` line of a /proc file, or ``default``."""
    try:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return default
