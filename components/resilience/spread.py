"""Keeper-side encoding: a rank hands its payload to the keeper on its own node, which encodes it and
spreads the pieces over the group's keepers.

Why the keeper encodes, not the trainer: the erasure code then runs in a process that is not on the
training critical path (on a GPU node, on CPUs that sit idle), and every node's keeper encodes only
its own node's ranks, so parity work is spread across the cluster instead of gathered on one
coordinator. The trainer's hand-off thread makes one same-node call and waits for the pieces to be
stored; a put that finds another version still being written waits for it (back-pressure), bounded
by ``wait_s``.
"""

from __future__ import annotations

from collections.abc import Sequence

import ray
from ray.actor import ActorHandle

from components.resilience.codec import ErasureCodec, make_codec


class SnapshotSpreader:
    """Keeper mixin: ``store_snapshot`` encodes one rank's payload and stores each piece on its holder."""

    def store_snapshot(
        self,
        version: int,
        group: int,
        payload: bytes,
        holders: Sequence[tuple[str, ActorHandle]],
        codec: tuple[str, int, int],
        generation: int,
        wait_s: float,
    ) -> int:
        """Encode ``payload`` as (``version``, ``group``) and put piece ``i`` on ``holders[i]`` (node id, keeper).

        Returns the number of pieces stored; raises whatever a holder's ``put`` raised.
        """
        pieces = self._codec(*codec).encode(version, group, payload)
        del payload  # the pieces are all that is kept
        here = ray.get_runtime_context().get_node_id()
        local, remote = [], []
        for piece, (node, keeper) in zip(pieces, holders, strict=True):
            if node == here:
                local.append(piece)  # stored without a round trip through Ray
            else:
                remote.append(keeper.put.remote(piece, generation=generation, wait_s=wait_s))
        for piece in local:
            self.put(piece, generation=generation, wait_s=wait_s)
        ray.get(remote)
        return len(pieces)

    def _codec(self, scheme: str, k: int, m: int) -> ErasureCodec:
        cache = self.__dict__.setdefault("_codecs", {})
        if (scheme, k, m) not in cache:
            cache[(scheme, k, m)] = make_codec(scheme, k, m)
        return cache[(scheme, k, m)]
