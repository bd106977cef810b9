"""Keeper side of the zero-copy hand-off (``handoff.py``): the descriptor of a trainer's shared snapshot
buffer, and the keeper's read-only, cached mappings of such buffers.

Apart from the trainer side (``SharedBuffers`` in ``handoff.py``, which makes the buffers as torch tensors)
because a keeper imports this and must not import torch: a keeper only moves bytes, and torch would cost
every keeper about a second of CPU and some hundred MB at its start (``test_keeper_imports.py``).
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass

import numpy as np

from components.common.errors import RecoveryError


class SharedBufferUnavailable(RecoveryError):
    """The keeper cannot map the trainer's snapshot buffer: the trainer must send the bytes instead."""


@dataclass(frozen=True)
class SharedBuffer:
    """How a keeper on the trainer's node finds one framed snapshot buffer."""

    pid: int  # the trainer process
    fd: int  # its memfd, open for the trainer's lifetime
    nbytes: int  # the framed payload: header + snapshot buffer
    token: str  # unique per buffer: fd numbers are reused, tokens never


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
