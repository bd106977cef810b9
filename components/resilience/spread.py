"""Keeper-side encoding: a rank hands its payload to the keeper on its own node, which encodes it and
spreads the pieces over the group's keepers.

Why the keeper encodes, not the trainer: the erasure code then runs in a process that is not on the
training critical path (on a GPU node, on CPUs that sit idle), and every node's keeper encodes only
its own node's ranks, so parity work is spread across the cluster instead of gathered on one
coordinator. The trainer's hand-off thread makes one same-node call, naming its shared buffer
(``handoff.py``): the keeper encodes from the trainer's pages, so the pieces it keeps are the only
copy of the rank's share on the node besides the buffer. The call returns once the pieces are
stored. A put that finds another version still being written is refused with ``BusyError``
(back-pressure, ``keeper.py``); the whole hand-off then raises it, and the rank retries after a
backoff (``sink.py``) instead of holding keeper threads while it waits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import ray
from ray.actor import ActorHandle

from components.resilience.codec import ErasureCodec, make_codec
from components.resilience.handoff import SharedBuffer, SharedBufferReader
from components.resilience.piece import PieceId
from components.resilience.remote import DATA_TIMEOUT_S, wait_for_all


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
        number of pieces stored; raises whatever a holder's ``put`` raised (``BusyError``: retry
        later) and ``KeeperTimeoutError`` naming a holder that did not answer within
        :data:`~components.resilience.remote.DATA_TIMEOUT_S`. ``wait_s`` is passed to the puts
        (``sink.py`` passes 0: back-pressure is waited out by the rank, not here).
        """
        # What this hand-off holds beyond the stored pieces (for the memory check after the first
        # snapshot, budget.py): a payload sent as bytes sits in the object store; a shared buffer
        # is the trainer's own memory.
        in_transit = 0
        if isinstance(payload, SharedBuffer):
            payload = self._shared_buffers().view(payload, generation)
        else:
            in_transit = len(payload)
        # Data pieces stay views of the payload until a holder takes them: the remote ones are copied
        # once, into the object store, by `.remote()` itself (before it returns, so the trainer may
        # reuse its buffer once this call ends); the local one by `put`, which owns what it keeps.
        pieces = self._codec(*codec).encode(version, group, payload, copy=False)
        del payload
        here = ray.get_runtime_context().get_node_id()
        # the pieces bound for other nodes are copied once, into the object store
        in_transit += sum(len(p.data) for p, (node, _) in zip(pieces, holders, strict=True) if node != here)
        self._note_transient(version, in_transit)
        local, remote = [], {}
        for piece, (node, keeper) in zip(pieces, holders, strict=True):
            if node == here:
                local.append(piece)  # stored without a round trip through Ray
            else:
                remote[node] = keeper.put.remote(piece, generation=generation, wait_s=wait_s)
        del pieces
        for piece in local:
            self.put(piece, generation=generation, wait_s=wait_s)
        del local
        wait_for_all(remote, call=f"put(version {version}, group {group})", timeout_s=DATA_TIMEOUT_S + wait_s)
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

    def memory_need(self, version: int) -> tuple[int, int, int]:
        """``(bytes of version held here, bytes its hand-offs here held in transit, budget bytes)``.

        The transit bytes add up every hand-off of the version on this node, as if they overlapped
        (the node's ranks snapshot the same step, so they do).
        """
        with self._lock:
            stored = sum(self._sizes.get(version, {}).values())
            return stored, self.__dict__.get("_transient", {}).get(version, 0), self.budget_bytes

    def _note_transient(self, version: int, nbytes: int) -> None:
        with self._lock:
            transient = self.__dict__.setdefault("_transient", {})
            transient[version] = transient.get(version, 0) + nbytes
            for old in [v for v in transient if v < version - 1]:  # the current and previous versions suffice
                del transient[old]

    def _codec(self, scheme: str, k: int, m: int) -> ErasureCodec:
        cache = self.__dict__.setdefault("_codecs", {})
        if (scheme, k, m) not in cache:
            cache[(scheme, k, m)] = make_codec(scheme, k, m)
        return cache[(scheme, k, m)]
