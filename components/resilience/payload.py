"""One rank's snapshot as the bytes that get erasure-coded: its layout, then its buffer.

A restore happens in a fresh process whose optimizer has no state yet, so it cannot rebuild the
layout from live tensors (:class:`~components.resilience.layout.SnapshotLayout` needs AdamW's lazily
created state). The layout therefore travels inside the payload, covered by the same checksums
and parity as the tensors it describes::

    [magic "LMFS1"][u32 LE: layout JSON length][layout JSON][snapshot buffer]

A buffer can be made with its header already in front (:func:`header`, ``handoff.py``): then framing
costs nothing per snapshot, the buffer is the payload.
"""

from __future__ import annotations

import json
import struct

from components.common.errors import RecoveryError
from components.resilience.layout import SnapshotLayout

MAGIC = b"LMFS1"
_HEADER = struct.Struct("<I")


def header(layout: SnapshotLayout, *, align: int = 1) -> bytes:
    """The bytes in front of the snapshot buffer: magic, length, layout JSON. With ``align`` the JSON
    is padded with spaces (valid JSON whitespace) so the buffer behind it starts ``align``-aligned:
    a buffer made with its header in front (``handoff.py``) keeps its tensors aligned."""
    described = json.dumps(layout.to_dict(), separators=(",", ":")).encode()
    pad = -(len(MAGIC) + _HEADER.size + len(described)) % align
    described += b" " * pad
    return b"".join((MAGIC, _HEADER.pack(len(described)), described))


def frame(layout: SnapshotLayout, buffer: memoryview | bytes) -> bytes:
    """The payload of one snapshot: a single copy of ``buffer`` behind its layout."""
    return b"".join((header(layout), buffer))


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
