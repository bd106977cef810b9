"""Keeper-side encoding: a rank hands its payload to the keeper on its own node, which encodes it and
spreads the pieces over the group's keepers.

Why the keeper encodes, not the trainer: the erasure code then runs in a process that is not on the
training critical path (on a GPU node, on CPUs that sit idle), and every node's keeper encodes only
its own node's ranks, so parity work is spread across the cluster instead of gathered on one
coordinator. The trainer's hand-off thread makes one same-node call, naming its shared buffer
(``handoff.py``): the keeper encodes from the trainer's pages, so the pieces it keeps are the only
copy of the rank's share on the node besides the buffer. The call returns once the pieces are stored; a put that finds another version still being written waits for it (back-pressure), bounded
by ``wait_s``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import ray
from ray.actor import ActorHandle

from components.resilience.codec import ErasureCodec, make_codec
from components.resilience.handoff import SharedBuffer, SharedBufferReader
from components.resilience.piece import PieceId


class SnapshotSpreader:
    """Keeper mixin: ``store_snapshot`` encodes one rank's payload and stores each piece on its holder."""

    def store_snapshot(
        self,
        version: int,
        group: int,
        payload: SharedBuffer | np.ndarray | bytes,
        holders: Sequence[tuple[str, ActorHandle]],
        codec: tuple[str, int, int],
        generation: int,
        wait_s: float,
    ) -> int:
        """Encode ``payload`` as (``version``, ``group``) and put piece ``i`` on ``holders[i]`` (node id, keeper).

        ``payload`` is the framed snapshot: a trainer's shared buffer on this node (read in place), or
        its bytes (a zero-copy view of Ray's object store when sent as a numpy array). Returns the
        number of pieces stored; raises whatever a holder's ``put`` raised.
        """
        if isinstance(payload, SharedBuffer):
            payload = self._shared_buffers().view(payload, generation)
        # Data pieces stay views of the payload until a holder takes them: the remote ones are copied
        # once, into the object store, by `.remote()` itself (before it returns, so the trainer may
        # reuse its buffer once this call ends); the local one by `put`, which owns what it keeps.
        pieces = self._codec(*codec).encode(version, group, payload, copy=False)
        del payload
        here = ray.get_runtime_context().get_node_id()
        local, remote = [], []
        for piece, (node, keeper) in zip(pieces, holders, strict=True):
            if node == here:
                local.append(piece)  # stored without a round trip through Ray
            else:
                remote.append(keeper.put.remote(piece, generation=generation, wait_s=wait_s))
        del pieces
        for piece in local:
            self.put(piece, generation=generation, wait_s=wait_s)
        del local
        ray.get(remote)
        return len(holders)

    def prepare(self, version: int, expected: set[PieceId], timeout_s: float) -> list[PieceId]:
        """Phase 1 of the commit in one call: wait until the ``expected`` pieces are stored (or
        ``timeout_s`` passes), then the ids of the pieces of ``version`` held intact."""
        self.wait_for_pieces(version, expected, timeout_s)
        return self.pieces(version)

    def release_buffers(self, tokens: list[str]) -> None:
        """Unmap trainer buffers that will not be handed off again (the trainer's sink closed)."""
        self._shared_buffers().release(tokens)

    def _shared_buffers(self) -> SharedBufferReader:
        return self.__dict__.setdefault("_shared", SharedBufferReader())

    def _codec(self, scheme: str, k: int, m: int) -> ErasureCodec:
        cache = self.__dict__.setdefault("_codecs", {})
        if (scheme, k, m) not in cache:
            cache[(scheme, k, m)] = make_codec(scheme, k, m)
        return cache[(scheme, k, m)]
