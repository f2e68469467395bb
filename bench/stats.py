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
        if digits is None:
            digits = _digits(self.median)
        low, high = _fmt(self.min, digits), _fmt(self.max, digits)
        return f"{_fmt(self.median, digits)} {self.unit} ({low}..{high}, n={len(self.values)})"

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


def _digits(value: float) -> int:
    """Decimals that keep about three significant figures for a value of this size."""
    magnitude = abs(value)
    if magnitude >= 100:
        return 0
    if magnitude >= 10:
        return 1
    if magnitude >= 1 or magnitude == 0:
        return 2
    return 3


def _fmt(value: float, digits: int | None = None) -> str:
    return f"{value:.{_digits(value) if digits is None else digits}f}"


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
