"""The ``Range`` header of a download, read the way a resumed download needs it (RFC 9110 §14).

Why not the web framework's file response: artifacts are not always files (an S3 object is read
through the store), so the one range reading both stores share is here. One range is served: the
agent resumes with ``bytes=<have>-``; a header with several ranges, another unit or bad syntax is
ignored (the whole object, 200), as the RFC allows; a range that starts at or past the end is
unsatisfiable (416, which tells the agent its partial file does not fit the artifact).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ONE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``stop`` (exclusive) of an object of ``size`` bytes."""

    start: int
    stop: int
    size: int

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{self.size}"


class Unsatisfiable(Exception):
    """The range starts at or after the end of the object (416)."""


def requested_range(header: str | None, size: int) -> ByteRange | None:
    """The range to serve of an object of ``size`` bytes, or None for the whole object; raises
    :class:`Unsatisfiable` for a range that selects nothing."""
    if not header:
        return None
    match = _ONE_RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - suffix), size, size)
    start = int(first)
    stop = size if not last else min(size, int(last) + 1)
    if last and int(last) < start:
        return None  # an invalid range-spec: ignore the header
    if start >= size:
        raise Unsatisfiable
    return ByteRange(start, stop, size)
