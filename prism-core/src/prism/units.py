"""Parsing and printing durations (``30d``) and byte sizes (``8MiB``)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import NewType

#: A size in bytes; in configuration it may be written like ``8MiB``.
ByteSize = NewType("ByteSize", int)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|us|s|m|h|d|w)")
_DURATION_UNITS = {
    "us": timedelta(microseconds=1),
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_duration(value: object) -> timedelta:
    """``30d``, ``12h``, ``1h30m``, ``500ms`` or a number of seconds.

    :raises ValueError: with a message that shows the expected form.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30d, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a positive duration like 30d, got {value!r}")
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip()
        pos = 0
        total = timedelta()
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos and text[pos : match.start()].strip():
                break
            total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        else:
            if pos and not text[pos:].strip():
                return total
    raise ValueError(f"expected a duration like 30d, 12h or 500ms, got {value!r}")


def format_duration(value: timedelta) -> str:
    micros = value // timedelta(microseconds=1)
    for unit in ("w", "d", "h", "m", "s", "ms", "us"):
        size = _DURATION_UNITS[unit] // timedelta(microseconds=1)
        if micros and micros % size == 0:
            return f"{micros // size}{unit}"
    return "0s"


def format_elapsed(value: timedelta) -> str:
    """A measured duration (an age, a clock difference) for a message: to the
    second above one second, to the millisecond below it, then as
    :func:`format_duration`. Not for settings, which must read back exactly."""
    micros = abs(value // timedelta(microseconds=1))
    sign = "-" if value < timedelta(0) else ""
    if micros >= 1_000_000:
        return sign + format_duration(timedelta(seconds=round(micros / 1_000_000)))
    if micros >= 1_000:
        return sign + format_duration(timedelta(milliseconds=round(micros / 1_000)))
    return sign + format_duration(timedelta(microseconds=micros))


def parse_size(value: object) -> int:
    """``8MiB``, ``512KiB``, ``2MB`` or a number of bytes.

    :raises ValueError: with a message that shows the expected form.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 8MiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a positive size like 8MiB, got {value!r}")
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match:
            unit = (match.group(2) or "b").lower()
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"expected a size like 8MiB or 512KiB, got {value!r}")


def format_size(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}B"
