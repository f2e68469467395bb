"""One syntax for every duration the command line takes (``--interval``, ``--prune-after``, the relative
form of ``--since``): a number of seconds (``30``, ``0.5``), or amounts with units written together,
as Go's ``time.ParseDuration`` and Consul's own flags write them, plus days and weeks: ``500ms``,
``90s``, ``15m``, ``2h``, ``1h30m``, ``3d``, ``1w``."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
FORMS: Final = "seconds (30, 0.5) or amounts with units: 500ms, 90s, 15m, 2h, 1h30m, 3d, 1w"
_NUMBER = r"\d+(?:\.\d+)?"
_PART = re.compile(rf"({_NUMBER})(ms|[smhdw])", re.IGNORECASE)
_WHOLE = re.compile(rf"^(?:{_NUMBER}(?:ms|[smhdw]))+$", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    """``text`` as a duration; ValueError naming the accepted forms (never a negative duration)."""
    value = text.strip().replace(" ", "")
    if not value:
        raise ValueError(f"empty duration: expected {FORMS}")
    if re.fullmatch(_NUMBER, value):
        seconds = float(value)
    elif _WHOLE.match(value):
        seconds = sum(float(amount) * UNITS[unit.lower()] for amount, unit in _PART.findall(value))
    else:
        raise ValueError(f"invalid duration {text!r}: expected {FORMS}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long") from None


def is_duration(text: str) -> bool:
    value = text.strip().replace(" ", "")
    return bool(re.fullmatch(_NUMBER, value) or _WHOLE.match(value))


def seconds_text(value: float) -> str:
    """A duration as these options write it: ``90s``, ``15m``, ``2h30m``, ``0.5s``."""
    if value < 60 or value != int(value):
        return f"{value:g}s"
    out, rest = "", int(value)
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out, rest = out + f"{rest // size}{unit}", rest % size
    return out
