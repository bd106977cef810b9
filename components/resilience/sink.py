"""Where a rank's finished snapshot goes: to the keeper on its node, and (rank 0) through the commit.

The snapshot engine calls :class:`KeeperSink` on its hand-off thread, off the training critical
path. Every rank's buffers are framed with its layout (``payload.py``) and shared with its own node's
keeper (``handoff.py``); the hand-off names the buffer, and the keeper encodes it in place and
spreads the pieces (``spread.py``). Rank 0 is also the commit
coordinator (:class:`Coordinator`): once every piece of every group of the version is stored it runs
the two-phase commit (``commit.py``), and every ``persist_every``-th snapshot it asks every keeper to
upload its pieces to the object store in the background (``persist.py``).

Rank 0's hand-off waits for the other ranks' pieces: with ``max_in_flight = 1`` a slow peer shows up
as stall on rank 0's next ``begin``, which is the honest place for it (the version is not safe
until every piece is stored).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import ray
import torch
from ray.actor import ActorHandle

from components.common.errors import RecoveryError
from components.common.log import get_logger
from components.common.storage import open_store
from components.resilience.commit import CALL_TIMEOUT_S, UNREACHABLE, CommitOutcome, commit_version
from components.resilience.handoff import SharedBuffer, SharedBuffers, SharedBufferUnavailable
from components.resilience.layout import SnapshotLayout
from components.resilience.payload import frame
from components.resilience.persist import prune
from components.resilience.placement import Placement

log = get_logger(__name__)

#: seconds a version may take to have all its pieces stored before it is aborted
COMPLETE_TIMEOUT_S = 120.0
#: seconds a put may wait for the previous version to be decided (back-pressure)
PUT_WAIT_S = 120.0


@dataclass
class PersistTarget:
    root: str  # <checkpoint_uri>/<stage>/snapshots
    every: int  # persist a version when version % every == 0 (every = snapshot_every * persist_every)
    store_options: dict = field(default_factory=dict)


class Coordinator:
    """Rank 0's part: wait for every piece of a version, commit it, persist every Nth one."""

    def __init__(self, keepers: Mapping[str, ActorHandle], placement: Placement, persist: PersistTarget | None) -> None:
        self.keepers, self.placement, self.persist = dict(keepers), placement, persist
        self.committed = self.aborted = self.persisted = 0
        self.calls = 0  # Ray calls made (prepare, commit, persist), for the fixed cost per snapshot
        self.last: CommitOutcome | None = None

    def settle(self, version: int) -> CommitOutcome:
        expected = self.placement.expected(version)
        # Phase 1 in one round: each keeper waits for its last expected piece (a put wakes it: no
        # polling, which on a CPU box would steal the cores training runs on), then lists what it
        # holds intact. A keeper that is gone or silent makes commit_version abort.
        prepared = {
            node: self.keepers[node].prepare.remote(version, ids, COMPLETE_TIMEOUT_S)
            for node, ids in expected.items()
            if node in self.keepers
        }
        outcome = commit_version(
            self.keepers, version, expected, prepared=prepared, prepared_timeout_s=COMPLETE_TIMEOUT_S + CALL_TIMEOUT_S
        )
        self.calls += 2 * len(prepared)  # prepare, then commit (or drop)
        self.last = outcome
        if not outcome.committed:
            self.aborted += 1
            return outcome
        self.committed += 1
        if self.persist and version % self.persist.every == 0:
            for keeper in self.keepers.values():
                keeper.persist.remote(version, self.persist.root, self.persist.store_options)
            self.calls += len(self.keepers)
            self.persisted += 1
            prune(open_store(self.persist.root, **self.persist.store_options), self.persist.root)
        return outcome


class KeeperSink:
    """The snapshot engine's sink on one rank: hand to the node's keeper, and (rank 0) commit.

    The engine's buffers come from here (:meth:`allocate_buffer`): framed, in memory the node's keeper
    maps (``handoff.py``), so a hand-off sends the keeper a descriptor, not the bytes.
    """

    def __init__(
        self,
        *,
        rank: int,
        keepers: Mapping[str, ActorHandle],
        placement: Placement,
        codec: tuple[str, int, int],
        generation: int,
        coordinator: Coordinator | None = None,
    ) -> None:
        self.rank, self.codec, self.generation, self.coordinator = rank, codec, generation, coordinator
        nodes = placement.groups[rank]
        self.holders = [(node, keepers[node]) for node in nodes]
        self.home = keepers[nodes[0]]  # the keeper on this rank's own node encodes
        self.shared = SharedBuffers()
        self.shared_ok = True  # until the keeper says it cannot map our buffers
        self.calls = 0  # Ray calls this rank made to hand off its snapshots

    def allocate_buffer(self, layout: SnapshotLayout) -> torch.Tensor:
        return self.shared.allocate(layout)

    def __call__(self, version: int, data: memoryview, layout: SnapshotLayout) -> None:
        found = self.shared.find(data)
        try:
            try:
                payload = found[0] if found and self.shared_ok else self._bytes(found, data, layout)
                self._store(version, payload)
            except SharedBufferUnavailable as e:
                log.warning("rank %d: %s", self.rank, e)
                self.shared_ok = False
                self._store(version, self._bytes(found, data, layout))
        except UNREACHABLE as e:
            raise RecoveryError(f"snapshot version {version}: the keeper of rank {self.rank}'s node is gone") from e
        if self.coordinator is not None:
            self.coordinator.settle(version)

    def _store(self, version: int, payload: SharedBuffer | np.ndarray) -> None:
        ray.get(
            self.home.store_snapshot.remote(
                version, self.rank, payload, self.holders, self.codec, self.generation, PUT_WAIT_S
            )
        )
        self.calls += 1  # (the keeper makes one put call per piece held on another node)

    @staticmethod
    def _bytes(found: tuple | None, data: memoryview, layout: SnapshotLayout) -> np.ndarray:
        """The framed payload as a numpy argument: Ray copies it into the node's object store once and
        the keeper reads it there in place (numpy arrays come back from Ray as zero-copy views)."""
        return found[1] if found else np.frombuffer(frame(layout, data), dtype=np.uint8)

    def close(self) -> None:
        """Let the keeper unmap this rank's buffers (fire and forget: a gone keeper has none)."""
        tokens = self.shared.tokens()
        if tokens:
            self.home.release_buffers.remote(tokens)
        self.shared.close()
