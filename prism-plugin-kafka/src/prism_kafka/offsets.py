"""Offsets and ids: how a Prism message id names a Kafka record, and how acks
made out of order survive in a commit's metadata.

Kafka keeps one committed offset per (group, partition): everything below it
is done. Prism consumers may ack out of order, so the committed offset only
moves over the contiguous acked prefix. The acks beyond that gap are written
into the commit's metadata string (Kafka stores up to 4 KiB of it by default),
so that a process that takes the partition over later, or the same one after a
restart, skips them instead of delivering acknowledged messages again. The
delivery counts of messages delivered and not yet acked are written there too,
so that attempts keep counting up across processes and restarts (and
``max_attempts`` still dead-letters a message that crashes its consumers). If
they do not fit, the tail is left out: those messages come back once more, or
with a lower attempt count, and nothing unacknowledged is ever skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: ``<partition>-<offset>``, the offset zero-padded so ids sort in publish
#: order within a partition.
_ID = re.compile(r"(\d{1,9})-(\d{20})")

#: Marks metadata this backend wrote; anything else is ignored.
_METADATA_TAG = "prism1:"

#: Kafka's default ``offset.metadata.max.bytes`` is 4096; stay well under it.
MAX_METADATA_CHARS = 3000


def message_id(partition: int, offset: int) -> str:
    return f"{partition}-{offset:020d}"


def parse_message_id(value: str) -> tuple[int, int] | None:
    """``(partition, offset)`` of an id this backend made, or None."""
    match = _ID.fullmatch(value)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def encode_progress(floor: int, acked: Iterable[int], attempts: Mapping[int, int]) -> str:
    """The commit metadata for a partition committed at ``floor``: offsets above
    it acked out of order, as ranges relative to ``floor``, then the delivery
    counts of messages delivered and not acked (``prism1:0-3,7,9-12;5x2,8x1``),
    cut short to ``MAX_METADATA_CHARS`` (acks first: they matter more)."""
    size = len(_METADATA_TAG) + 1
    ranges: list[str] = []
    for first, last in _ranges(sorted(o for o in set(acked) if o >= floor)):
        part = str(first - floor) if first == last else f"{first - floor}-{last - floor}"
        if size + len(part) + 1 > MAX_METADATA_CHARS:
            break
        ranges.append(part)
        size += len(part) + 1
    counts: list[str] = []
    for offset in sorted(o for o in attempts if o >= floor and attempts[o] > 0):
        part = f"{offset - floor}x{attempts[offset]}"
        if size + len(part) + 1 > MAX_METADATA_CHARS:
            break
        counts.append(part)
        size += len(part) + 1
    if not ranges and not counts:
        return ""
    return _METADATA_TAG + ",".join(ranges) + (";" + ",".join(counts) if counts else "")


def _ranges(offsets: list[int]) -> Iterable[tuple[int, int]]:
    start: int | None = None
    end = 0
    for offset in offsets:
        if start is not None and offset == end + 1:
            end = offset
            continue
        if start is not None:
            yield start, end
        start = end = offset
    if start is not None:
        yield start, end


def decode_progress(floor: int, metadata: str | None) -> tuple[set[int], dict[int, int]]:
    """The absolute offsets and delivery counts :func:`encode_progress` wrote;
    empty for metadata written by anyone else or malformed."""
    if not metadata or not metadata.startswith(_METADATA_TAG):
        return set(), {}
    acked: set[int] = set()
    attempts: dict[int, int] = {}
    ranges, _, counts = metadata[len(_METADATA_TAG) :].partition(";")
    try:
        for part in filter(None, ranges.split(",")):
            first, _, last = part.partition("-")
            lo = int(first)
            hi = int(last) if last else lo
            if lo < 0 or hi < lo or hi - lo > 1_000_000:
                return set(), {}
            acked.update(range(floor + lo, floor + hi + 1))
        for part in filter(None, counts.split(",")):
            delta, _, count = part.partition("x")
            if int(delta) < 0 or int(count) < 1:
                return set(), {}
            attempts[floor + int(delta)] = int(count)
    except ValueError:
        return set(), {}
    return acked, attempts
