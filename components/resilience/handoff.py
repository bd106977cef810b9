"""Snapshot buffers the keeper on the same node reads in place: the hand-off without a copy.

A rank's snapshot buffers live in anonymous shared-memory files (``memfd_create``) of the trainer
process, already framed (``payload.py``): the layout header is written once, in front of the tensors,
when a buffer is made, so the buffer *is* the payload the keeper encodes. At the hand-off the trainer
sends the keeper on its node a small descriptor (:class:`SharedBuffer`: pid, fd, size); the keeper
maps the same pages read-only through ``/proc/<pid>/fd/<fd>`` (once per buffer, then cached) and
encodes straight from them into the pieces it keeps. Copies of a rank's share on its node: the
buffer, then the keeper's pieces; no framed copy, no Ray call argument, no deserialized copy.

Why not Ray's object store: a Ray object dies with its owner, the trainer, so the keeper would have
to copy it out anyway, and putting it there is a copy of its own. Here the keeper owns its pieces
before ``store_snapshot`` returns, and a trainer that crashes meanwhile leaves the keeper's mapping
valid (pages live while any process maps them); the version was not committed anyway.

Memory: a memfd has no name, so nothing is left in ``/dev/shm`` when a process dies; its pages are
freed once no process maps them. A keeper drops its mappings when the trainer's sink closes, or
when a newer worker-group generation hands off (a crashed trainer's buffers live until then).

Fallback: if the keeper cannot open the trainer's file (another PID namespace, ``/proc`` hidden) it
raises :class:`SharedBufferUnavailable`, and the trainer sends the framed buffer as a numpy argument
instead: Ray copies it into the node's object store once, and the keeper reads it there in place
(``ray.get`` gives numpy arrays as zero-copy, read-only views).

This module is the trainer's side (it makes torch tensors); the descriptor and the keeper's reader are in
``handoff_reader.py``, which keepers import without importing torch.
"""

from __future__ import annotations

import mmap
import os
import uuid

import numpy as np
import torch

from components.resilience.handoff_reader import SharedBuffer, SharedBufferReader, SharedBufferUnavailable
from components.resilience.layout import ALIGN, SnapshotLayout
from components.resilience.payload import header

# The descriptor and the keeper's reader live in handoff_reader.py, which keepers import without torch;
# trainer-side code imports the whole hand-off from here.
__all__ = ["SharedBuffer", "SharedBufferReader", "SharedBufferUnavailable", "SharedBuffers"]


class SharedBuffers:
    """Trainer side: makes framed snapshot buffers in shared memory and names them for the keeper."""

    def __init__(self) -> None:
        # address of a snapshot buffer's first byte -> (descriptor, framed view of its whole file)
        self._made: dict[int, tuple[SharedBuffer, np.ndarray]] = {}
        self._files: list[tuple[int, mmap.mmap]] = []

    def allocate(self, layout: SnapshotLayout) -> torch.Tensor:
        """A zeroed uint8 tensor of ``layout.total_bytes`` behind its frame header, in a shared file."""
        head = header(layout, align=ALIGN)  # padded so the tensors keep their 64-byte alignment
        nbytes = len(head) + layout.total_bytes
        fd = os.memfd_create("lmforge-snapshot", os.MFD_CLOEXEC)
        os.ftruncate(fd, nbytes)  # a fresh memfd reads as zeros, like torch.zeros
        mapped = mmap.mmap(fd, nbytes)
        framed = np.frombuffer(mapped, dtype=np.uint8)
        framed[: len(head)] = np.frombuffer(head, dtype=np.uint8)
        buffer = torch.from_numpy(framed[len(head) :])
        if torch.cuda.is_available():
            # Page-locked, so the side-stream copy DMAs into it as into pin_memory (untested: no GPU here).
            torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), buffer.numel(), 0)
        self._files.append((fd, mapped))
        self._made[buffer.data_ptr()] = (SharedBuffer(os.getpid(), fd, nbytes, uuid.uuid4().hex), framed)
        return buffer

    def find(self, data: memoryview | np.ndarray) -> tuple[SharedBuffer, np.ndarray] | None:
        """``(descriptor, framed view)`` of the buffer whose snapshot bytes ``data`` are, else None."""
        address = np.frombuffer(data, dtype=np.uint8).ctypes.data
        return self._made.get(address)

    def tokens(self) -> list[str]:
        return [desc.token for desc, _ in self._made.values()]

    def close(self) -> None:
        """Close the files; the pages live on while a tensor or a keeper still maps them."""
        for fd, _ in self._files:
            os.close(fd)
        self._files.clear()
        self._made.clear()
