"""Where a rank's finished snapshot goes: to the keeper on its node, and (rank 0) through the commit.

The snapshot engine calls :class:`KeeperSink` on its hand-off thread, off the training critical
path. Every rank frames its buffer with its layout (``payload.py``) and hands it to its own node's
keeper, which encodes and spreads the pieces (``spread.py``). Rank 0 is also the commit
coordinator (:class:`Coordinator`): once every piece of every group of the version is stored it runs
the two-phase commit (``commit.py``), and every ``persist_every``-th snapshot it asks every keeper to
upload its pieces to the object store in the background (``persist.py``).

Rank 0's hand-off waits for the other ranks' pieces: with ``max_in_flight = 1`` a slow peer shows up
as stall on rank 0's next ``begin``, which is the honest place for it (the version is not safe
until every piece is stored).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import ray
from ray.actor import ActorHandle

from components.common.errors import RecoveryError
from components.common.log import get_logger
from components.common.storage import open_store
from components.resilience.commit import UNREACHABLE, CommitOutcome, commit_version
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
        self.last: CommitOutcome | None = None
        #: fault injection (``commit_cut``): called with (version, expected) once every piece is stored
        self.cut: Callable[[int, dict], None] | None = None

    def settle(self, version: int) -> CommitOutcome:
        expected = self.placement.expected(version)
        self._wait_complete(version, expected)
        if self.cut is not None:
            self.cut(version, expected)
        outcome = commit_version(self.keepers, version, expected)
        self.last = outcome
        if not outcome.committed:
            self.aborted += 1
            return outcome
        self.committed += 1
        if self.persist and version % self.persist.every == 0:
            for keeper in self.keepers.values():
                keeper.persist.remote(version, self.persist.root, self.persist.store_options)
            self.persisted += 1
            prune(open_store(self.persist.root, **self.persist.store_options), self.persist.root)
        return outcome

    def _wait_complete(self, version: int, expected: dict) -> None:
        """Return once every keeper holds its expected pieces, a keeper is lost, or the deadline passes.

        Each keeper blocks in ``wait_for_pieces`` until its last expected piece arrives: no polling,
        which on a CPU box would steal the cores training runs on.
        """
        calls = [
            self.keepers[node].wait_for_pieces.remote(version, ids, COMPLETE_TIMEOUT_S)
            for node, ids in expected.items()
            if ids and node in self.keepers
        ]
        with contextlib.suppress(*UNREACHABLE):  # a keeper is gone: commit_version finds out which and aborts
            ray.get(calls)


class KeeperSink:
    """The snapshot engine's sink on one rank: frame, hand to the node's keeper, and (rank 0) commit."""

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

    def __call__(self, version: int, data: memoryview, layout: SnapshotLayout) -> None:
        payload = frame(layout, data)
        try:
            ray.get(
                self.home.store_snapshot.remote(
                    version, self.rank, payload, self.holders, self.codec, self.generation, PUT_WAIT_S
                )
            )
        except UNREACHABLE as e:
            raise RecoveryError(f"snapshot version {version}: the keeper of rank {self.rank}'s node is gone") from e
        if self.coordinator is not None:
            self.coordinator.settle(version)
