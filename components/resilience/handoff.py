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
"""

from __future__ import annotations

import mmap
import os
import threading
import uuid
from dataclasses import dataclass

import numpy as np
import torch

from components.common.errors import RecoveryError
from components.resilience.layout import ALIGN, SnapshotLayout
from components.resilience.payload import header


class SharedBufferUnavailable(RecoveryError):
    """The keeper cannot map the trainer's snapshot buffer: the trainer must send the bytes instead."""


@dataclass(frozen=True)
class SharedBuffer:
    """How a keeper on the trainer's node finds one framed snapshot buffer."""

    pid: int  # the trainer process
    fd: int  # its memfd, open for the trainer's lifetime
    nbytes: int  # the framed payload: header + snapshot buffer
    token: str  # unique per buffer: fd numbers are reused, tokens never


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


class SharedBufferReader:
    """Keeper side: read-only mappings of the trainers' buffers on this node, cached per buffer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # ranks of one node hand off concurrently
        self._mapped: dict[str, tuple[mmap.mmap, int]] = {}  # token -> (mapping, generation)

    def view(self, desc: SharedBuffer, generation: int) -> np.ndarray:
        """The framed payload of ``desc`` as a read-only uint8 view (no copy)."""
        with self._lock:
            # buffers of older worker groups are dead trainers' memory: let it go
            for token in [t for t, (_, g) in self._mapped.items() if g < generation]:
                del self._mapped[token]
            if desc.token not in self._mapped:
                self._mapped[desc.token] = (_map(desc), generation)
            mapped = self._mapped[desc.token][0]
        return np.frombuffer(mapped, dtype=np.uint8, count=desc.nbytes)

    def release(self, tokens: list[str]) -> None:
        """Forget these buffers (the trainer closed its sink); unmapped once no view is left."""
        with self._lock:
            for token in tokens:
                self._mapped.pop(token, None)

    def __len__(self) -> int:
        return len(self._mapped)


def _map(desc: SharedBuffer) -> mmap.mmap:
    path = f"/proc/{desc.pid}/fd/{desc.fd}"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise SharedBufferUnavailable(
            f"keeper cannot open the trainer's snapshot buffer {path} ({e}); the keeper and the trainer must "
            "share a PID namespace (same pod or host); the trainer falls back to sending the bytes"
        ) from e
    try:
        size = os.fstat(fd).st_size
        if size != desc.nbytes:
            raise SharedBufferUnavailable(f"{path} holds {size} bytes, the trainer described {desc.nbytes}")
        return mmap.mmap(fd, desc.nbytes, prot=mmap.PROT_READ)
    finally:
        os.close(fd)  # the mapping keeps the pages
