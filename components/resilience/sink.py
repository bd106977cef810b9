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

Back-pressure: a keeper holds the committed version and one being written, so a rank that is a
snapshot ahead of the commit must wait. It waits on its own hand-off thread, not in the keepers:
it asks its group's keepers (``busy_with``, a control call) whether they would take the version,
and sleeps with a growing backoff (:data:`RETRY_FIRST_S` to :data:`RETRY_MAX_S`) until they would,
then hands off; a keeper that turned busy in between answers ``BusyError`` and the rank asks again.
After :data:`PUT_WAIT_S` it gives up with an error that says which version blocks it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from ray.actor import ActorHandle

from components.common.errors import RecoveryError
from components.common.log import get_logger
from components.common.storage import open_store
from components.resilience.budget import KeeperNeed, check_need
from components.resilience.commit import UNREACHABLE, CommitOutcome, commit_version
from components.resilience.keeper import MIB, BusyError
from components.resilience.layout import SnapshotLayout
from components.resilience.payload import frame
from components.resilience.persist import VersionShape, prune
from components.resilience.placement import Placement
from components.resilience.remote import CONTROL_TIMEOUT_S, DATA_TIMEOUT_S, wait_for, wait_for_all

log = get_logger(__name__)

#: seconds a version may take to have all its pieces stored before it is aborted
COMPLETE_TIMEOUT_S = 120.0
#: seconds a rank's hand-off may wait for the previous version to be decided (back-pressure)
PUT_WAIT_S = 120.0
#: first and longest sleep between two back-pressure checks: short enough that a rank resumes soon
#: after the commit, long enough that waiting ranks cost the keepers a few calls per second
RETRY_FIRST_S = 0.005
RETRY_MAX_S = 0.25


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
        #: (scheme, k, m) the ranks encode with; rank 0's KeeperSink sets it. Persisted manifests
        #: record k, so a version counts as complete once every group has k pieces in the store.
        self.codec: tuple[str, int, int] | None = None

    def settle(self, version: int) -> CommitOutcome:
        expected = self.placement.expected(version)
        self._wait_complete(version, expected)
        outcome = commit_version(self.keepers, version, expected)
        self.last = outcome
        if not outcome.committed:
            self.aborted += 1
            return outcome
        self.committed += 1
        if self.committed == 1:
            self.check_memory(version)
        if self.persist and version % self.persist.every == 0:
            groups = self.placement.groups
            shape = VersionShape(len(groups), len(groups[0]), self.codec[1] if self.codec else None)
            for keeper in self.keepers.values():
                keeper.persist.remote(version, self.persist.root, self.persist.store_options, shape)
            self.persisted += 1
            prune(open_store(self.persist.root, **self.persist.store_options), self.persist.root)
        return outcome

    def check_memory(self, version: int) -> None:
        """Check every keeper's measured need for committed ``version`` against its budget (``budget.py``).

        Run after the first commit of a worker group: the sizes are then real (the largest share,
        framing and hand-off transit as they happened), and a budget that cannot hold two versions
        of them fails now, with the value to set, instead of a later snapshot failing mid-run.
        """
        calls = {node: keeper.memory_need.remote(version) for node, keeper in self.keepers.items()}
        try:
            answers = wait_for_all(calls, call=f"memory_need(version {version})", timeout_s=CONTROL_TIMEOUT_S)
        except UNREACHABLE as e:  # a keeper lost right after the commit: recovery's business, not the budget's
            log.warning("keeper memory check after version %d skipped: %s", version, e)
            return
        needs = {node: (KeeperNeed(stored, transient), budget) for node, (stored, transient, budget) in answers.items()}
        node, (need, budget) = max(needs.items(), key=lambda item: item[1][0].with_headroom)
        check_need(budget // MIB, need, f"measured on node {node[:8]} after snapshot version {version}")

    def _wait_complete(self, version: int, expected: dict) -> None:
        """Return once every keeper holds its expected pieces, a keeper is lost, or the deadline passes.

        Each keeper blocks in ``wait_for_pieces`` until its last expected piece arrives: no polling,
        which on a CPU box would steal the cores training runs on.
        """
        calls = {
            node: self.keepers[node].wait_for_pieces.remote(version, ids, COMPLETE_TIMEOUT_S)
            for node, ids in expected.items()
            if ids and node in self.keepers
        }
        with contextlib.suppress(*UNREACHABLE):  # a keeper is gone: commit_version finds out which and aborts
            wait_for_all(
                calls, call=f"wait_for_pieces(version {version})", timeout_s=COMPLETE_TIMEOUT_S + CONTROL_TIMEOUT_S
            )


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
        self.home_node, self.home = nodes[0], keepers[nodes[0]]  # the keeper on this rank's own node encodes
        self.retries = 0  # back-pressure checks that found a keeper busy (all hand-offs)
        if coordinator is not None and coordinator.codec is None:
            coordinator.codec = codec

    def __call__(self, version: int, data: memoryview, layout: SnapshotLayout) -> None:
        payload = frame(layout, data)
        try:
            self.hand_off(version, payload, deadline=time.monotonic() + PUT_WAIT_S)
        except UNREACHABLE as e:
            raise RecoveryError(
                f"snapshot version {version}: a keeper of rank {self.rank}'s group is gone or silent: {e}"
            ) from e
        if self.coordinator is not None:
            self.coordinator.settle(version)

    def hand_off(self, version: int, payload: bytes, *, deadline: float) -> None:
        """Hand ``payload`` to the home keeper once no keeper of the group is busy with another version.

        Back-pressure never holds a keeper thread: busy keepers answer at once, and this (the rank's
        hand-off thread) sleeps between checks. Past ``deadline`` (``time.monotonic()``) it raises.
        """
        delay, started = RETRY_FIRST_S, time.monotonic()
        while True:
            busy = self._busy_with(version)
            if busy is None:
                try:
                    wait_for(
                        self.home.store_snapshot.remote(
                            version, self.rank, payload, self.holders, self.codec, self.generation, 0.0
                        ),
                        node=self.home_node,
                        call=f"store_snapshot(version {version}, rank {self.rank})",
                        timeout_s=DATA_TIMEOUT_S,
                    )
                    return
                except BusyError:  # a holder took on another version between the check and the put
                    busy = "another version"
            self.retries += 1
            if time.monotonic() + delay > deadline:
                raise RecoveryError(
                    f"snapshot version {version}: rank {self.rank}'s keepers were still writing {busy} when its "
                    f"hand-off gave up after {time.monotonic() - started:.0f} s of back-pressure. The previous version was "
                    "neither committed nor aborted: a rank stopped handing off, or rank 0's commit is stuck "
                    f"(see the logs of rank 0 and of the keepers). Ranks wait up to sink.PUT_WAIT_S={PUT_WAIT_S:.0f} s"
                )
            time.sleep(delay)
            delay = min(2 * delay, RETRY_MAX_S)

    def _busy_with(self, version: int) -> int | None:
        """The version some keeper of this rank's group is still writing instead of ``version``, if any."""
        calls = {node: keeper.busy_with.remote(version, self.generation) for node, keeper in self.holders}
        answers = wait_for_all(calls, call=f"busy_with(version {version})", timeout_s=CONTROL_TIMEOUT_S)
        return next((v for v in answers.values() if v is not None), None)
