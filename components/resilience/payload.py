"""One rank's snapshot as the bytes that get erasure-coded: its layout, then its buffer.

A restore happens in a fresh process whose optimizer has no state yet, so it cannot rebuild the
layout from live tensors (:class:`~components.resilience.layout.SnapshotLayout` needs AdamW's lazily
created state). The layout therefore travels inside the payload, covered by the same checksums
and parity as the tensors it describes::

    [magic "LMFS1"][u32 LE: layout JSON length][layout JSON][snapshot buffer]
"""

from __future__ import annotations

import json
import struct

from components.common.errors import RecoveryError
from components.resilience.layout import SnapshotLayout

MAGIC = b"LMFS1"
_HEADER = struct.Struct("<I")


def frame(layout: SnapshotLayout, buffer: memoryview | bytes) -> bytes:
    """The payload of one snapshot: a single copy of ``buffer`` behind its layout."""
    described = json.dumps(layout.to_dict(), separators=(",", ":")).encode()
    return b"".join((MAGIC, _HEADER.pack(len(described)), described, buffer))


def unframe(payload: bytes | memoryview, *, where: str = "snapshot payload") -> tuple[SnapshotLayout, memoryview]:
    """``(layout, buffer)`` of a payload made by :func:`frame` (the buffer is a view, not a copy)."""
    view = memoryview(payload).cast("B")
    start = len(MAGIC) + _HEADER.size
    if view.nbytes < start or bytes(view[: len(MAGIC)]) != MAGIC:
        raise RecoveryError(f"{where}: not an lmforge snapshot payload (bad magic)")
    (length,) = _HEADER.unpack(view[len(MAGIC) : start])
    if start + length > view.nbytes:
        raise RecoveryError(f"{where}: layout of {length} bytes runs past the payload's {view.nbytes} bytes")
    layout = SnapshotLayout.from_dict(json.loads(bytes(view[start : start + length])))
    buffer = view[start + length :]
    if buffer.nbytes < layout.total_bytes:
        raise RecoveryError(f"{where}: buffer holds {buffer.nbytes} bytes, its layout needs {layout.total_bytes}")
    return layout, buffer
