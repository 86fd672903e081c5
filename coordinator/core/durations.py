"""Human durations such as ``100ms``, ``5s``, ``2m`` parsed into float seconds."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")


def parse_duration(value: object) -> float:
    """Return seconds for ``value``: a number of seconds or a string like ``250ms``."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(f"unparsable duration {value!r}: use a number with ms, s, m or h")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"not a duration: {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite duration: {value!r}")
    if seconds < 0:
        raise ValueError(f"negative duration {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Inverse of :func:`parse_duration` for display and round trips.

    Sub-second values read best in ``ms``, but ``x * 0.001`` does not always give
    back ``seconds`` exactly, so the ``ms`` form is used only when it round-trips.
    """
    if 0 < seconds < 1:
        as_ms = f"{_positional(round(seconds * 1000, 9))}ms"
        if parse_duration(as_ms) == seconds:
            return as_ms
    return f"{_positional(seconds)}s"


def _positional(number: float) -> str:
    # repr is the shortest exact form but may use an exponent, which the parser rejects.
    text = format(Decimal(repr(number)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
