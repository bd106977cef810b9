"""Where a rank's finished snapshot goes: to the keeper on its node, and (rank 0) through the commit.

The snapshot engine calls :class:`KeeperSink` on its hand-off thread, off the training critical
path. Every rank's buffers are framed with its layout (``payload.py``) and shared with its own node's
keeper (``handoff.py``); the hand-off names the buffer, and the keeper encodes it in place and
spreads the pieces (``spread.py``); the call returns once every piece of the rank's group is stored.
The ranks then agree, in one all-reduce among themselves, that every hand-off returned: that is phase 1
of the commit, known without asking any keeper. Rank 0 is also the commit coordinator
(:class:`Coordinator`): it tells the keepers to commit the version (``commit.py``), and every
``persist_every``-th snapshot it asks every keeper to upload its pieces to the object store in the
background (``persist.py``).

Rank 0's hand-off waits for the other ranks' pieces: with ``max_in_flight = 1`` a slow peer shows up
as stall on rank 0's next ``begin``, which is the honest place for it (the version is not safe
until every piece is stored).

Back-pressure: a keeper holds the committed version and one being written, so a rank that is a
snapshot ahead of the commit must wait. It waits on its own hand-off thread, never in a keeper
thread: a put that finds another version still being written is refused at once with ``BusyError``;
the rank then tries the hand-off again after a growing backoff (:data:`RETRY_FIRST_S` to
:data:`RETRY_MAX_S`), one call each time (a refused retry costs the keeper no encoding and no bytes).
After :data:`PUT_WAIT_S` it gives up with an error that says which version blocks it (``busy_with``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
from ray.actor import ActorHandle

from components.common.errors import RecoveryError
from components.common.log import get_logger
from components.common.storage import open_store
from components.resilience.budget import KeeperNeed, check_need
from components.resilience.commit import CALL_TIMEOUT_S, UNREACHABLE, CommitOutcome, abort_version, commit_version
from components.resilience.dataplane import HolderUnknownError, KeeperLinks
from components.resilience.handoff import SharedBuffer, SharedBuffers, SharedBufferUnavailable
from components.resilience.keeper import MIB, BusyError
from components.resilience.keeper_client import KeeperClient
from components.resilience.layout import SnapshotLayout
from components.resilience.payload import frame
from components.resilience.persist import VersionShape, prune
from components.resilience.placement import Placement
from components.resilience.remote import CONTROL_TIMEOUT_S, DATA_TIMEOUT_S, wait_for_all
from components.training.parallel import min_over_ranks

log = get_logger(__name__)

#: seconds a version may take to have all its pieces stored before it is aborted
COMPLETE_TIMEOUT_S = 120.0
#: seconds a rank's hand-off may wait for the previous version to be decided (back-pressure)
PUT_WAIT_S = 120.0
#: first and longest sleep between two back-pressure checks: short enough that a rank resumes soon
#: after the commit, long enough that waiting ranks cost the keepers a few calls per second
RETRY_FIRST_S = 0.005
RETRY_MAX_S = 0.25
#: seconds a rank waits in the agreement after its hand-off for the slowest rank's word: that rank's whole
#: hand-off (back-pressure, then up to two data calls: the second after a HolderUnknownError) and rank 0's
#: settling of the previous version
AGREE_TIMEOUT_S = PUT_WAIT_S + 2 * DATA_TIMEOUT_S + COMPLETE_TIMEOUT_S + CALL_TIMEOUT_S


def agree_stored(version: int, ok: bool, group: object) -> bool:
    """True if every rank of ``group`` stored ``version`` (``ok`` on all of them), in one all-reduce.

    The version travels with the flag (MIN of ``version`` and of ``-version``): ranks whose snapshots
    fell out of step (one skipped a version the others handed off) raise ``RecoveryError`` on every
    rank, instead of one version's agreement standing in for another's.
    """
    low_ok, low, minus_high = min_over_ranks([int(ok), version, -version], group)
    if low != -minus_high:
        raise RecoveryError(
            f"ranks disagree on the snapshot version they hand off: {low} to {-minus_high} (this rank: {version}); "
            "a rank's snapshot stream fell out of step (see the ranks' logs for a failed snapshot before it)"
        )
    return bool(low_ok)


@dataclass
class PersistTarget:
    root: str  # <checkpoint_uri>/<stage>/snapshots
    every: int  # persist a version when version % every == 0 (every = snapshot_every * persist_every)
    store_options: dict = field(default_factory=dict)


class Coordinator:
    """Rank 0's part: wait for every piece of a version, commit it, persist every Nth one.

    Prepare, commit and drop go over the keepers' data plane (``keeper_client.py``); persistence
    and the memory check, once per many snapshots, through Ray.
    """

    def __init__(self, keepers: Mapping[str, ActorHandle], placement: Placement, persist: PersistTarget | None) -> None:
        self.placement, self.persist = placement, persist
        # Phase 1 waits up to COMPLETE_TIMEOUT_S in the keeper: the links' own timeout only bounds
        # connecting and sending; each answer is read with the deadline of its call.
        self.links = KeeperLinks(CONTROL_TIMEOUT_S)
        self.clients = {node: KeeperClient(node, handle, self.links) for node, handle in keepers.items()}
        self.committed = self.aborted = self.persisted = 0
        self.last: CommitOutcome | None = None
        #: (scheme, k, m) the ranks encode with; rank 0's KeeperSink sets it. Persisted manifests
        #: record k, so a version counts as complete once every group has k pieces in the store.
        self.codec: tuple[str, int, int] | None = None
        #: fault injection (``commit_cut``): called with (version, expected) once every piece is stored
        self.cut: Callable[[int, dict], None] | None = None
        self._previous: int | None = None  # the version settled before this one (committed or not)

    def settle(self, version: int, stored: bool | None = None) -> CommitOutcome:
        """Decide ``version`` and tell the keepers. ``stored``: what the ranks agreed on (True: every
        rank's hand-off stored its group; False: one failed, abort), or None when they cannot agree
        (one rank, or no process group): then every keeper is asked (``prepare``)."""
        previous, self._previous = self._previous, version
        expected = self.placement.expected(version)
        if stored is None:
            # Phase 1 in one round: each keeper waits for its last expected piece (a put wakes it: no
            # polling, which on a CPU box would steal the cores training runs on), then lists what it
            # holds intact. A keeper that is gone or silent makes commit_version abort.
            prepared = {
                node: self.clients[node].call("prepare", version, ids, COMPLETE_TIMEOUT_S)
                for node, ids in expected.items()
                if node in self.clients
            }
            if self.cut is not None:  # the fault strikes between a complete phase 1 and the commit
                for pending in prepared.values():
                    with contextlib.suppress(*UNREACHABLE):
                        pending.result(COMPLETE_TIMEOUT_S)
                self.cut(version, expected)
            outcome = commit_version(
                self.clients,
                version,
                expected,
                prepared=prepared,
                prepared_timeout_s=COMPLETE_TIMEOUT_S + CALL_TIMEOUT_S,
            )
        elif stored:
            if self.cut is not None:
                self.cut(version, expected)
            outcome = commit_version(self.clients, version, expected, stored=True)
        else:
            outcome = abort_version(self.clients, version, expected)
        self.last = outcome
        if not outcome.committed:
            self.aborted += 1
            return outcome
        self.committed += 1
        if self.committed == 1:
            self.check_memory(version)
        if self.persist and self._persist_due(previous, version):
            groups = self.placement.groups
            shape = VersionShape(len(groups), len(groups[0]), self.codec[1] if self.codec else None)
            for client in self.clients.values():
                client.call("persist", version, self.persist.root, self.persist.store_options, shape)
            self.persisted += 1
            prune(open_store(self.persist.root, **self.persist.store_options), self.persist.root)
        return outcome

    @property
    def calls(self) -> int:
        """Ray calls made so far (persist, memory check, data-plane address lookups, fallbacks)."""
        return sum(c.ray_calls for c in self.clients.values())

    @property
    def link_calls(self) -> int:
        """Calls made over the data plane (prepare, commit, drop)."""
        return sum(c.link_calls for c in self.clients.values())

    def close(self) -> None:
        self.links.close()

    def _persist_due(self, previous: int | None, version: int) -> bool:
        """Persist ``version`` if it is the first settled at or past a multiple of ``persist.every``.

        Without skipped snapshots that is exactly ``version % every == 0``; with ``resilience.coalesce``
        the multiple itself may have been skipped, and the next version taken stands in for it.
        """
        every = self.persist.every
        if previous is None or previous >= version:
            return version % every == 0
        return version // every > previous // every

    def check_memory(self, version: int) -> None:
        """Check every keeper's measured need for committed ``version`` against its budget (``budget.py``).

        Run after the first commit of a worker group: the sizes are then real (the largest share,
        framing and hand-off transit as they happened), and a budget that cannot hold two versions
        of them fails now, with the value to set, instead of a later snapshot failing mid-run.
        """
        calls = {node: client.call("memory_need", version) for node, client in self.clients.items()}
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        try:
            answers = {node: call.result(max(0.0, deadline - time.monotonic())) for node, call in calls.items()}
        except UNREACHABLE as e:  # a keeper lost right after the commit: recovery's business, not the budget's
            log.warning("keeper memory check after version %d skipped: %s", version, e)
            return
        needs = {node: (KeeperNeed(stored, transient), budget) for node, (stored, transient, budget) in answers.items()}
        node, (need, budget) = max(needs.items(), key=lambda item: item[1][0].with_headroom)
        check_need(budget // MIB, need, f"measured on node {node[:8]} after snapshot version {version}")


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
        self.home_node, self.home = nodes[0], keepers[nodes[0]]  # the keeper on this rank's own node encodes
        # Hand-offs of shared buffers go over the home keeper's data plane (``keeper_client.py``).
        self.links = KeeperLinks(DATA_TIMEOUT_S)
        self.home_client = KeeperClient(self.home_node, self.home, self.links)
        self._ray_calls = 0  # Ray calls made outside the home client (busy_with, buffer release)
        self.retries = 0  # back-pressure checks that found a keeper busy (all hand-offs)
        if coordinator is not None and coordinator.codec is None:
            coordinator.codec = codec
        self.shared = SharedBuffers()
        self.shared_ok = True  # until the keeper says it cannot map our buffers
        self._ranks = None  # gloo group of the ranks' agreement after each hand-off (join_ranks)

    def allocate_buffer(self, layout: SnapshotLayout) -> torch.Tensor:
        return self.shared.allocate(layout)

    def join_ranks(self, world_size: int) -> None:
        """Make the process group the ranks agree in after each hand-off (see :meth:`__call__`).

        Called by the snapshot engine at its first snapshot, on the trainer thread of every rank
        (``new_group`` is collective). A group of its own, on gloo: its one all-reduce per snapshot runs
        on the hand-off thread, beside the training's collectives on theirs. Without ``torch.distributed``
        (one process) the commit asks the keepers instead.
        """
        import torch.distributed as dist

        if world_size > 1 and dist.is_initialized():
            self._ranks = dist.new_group(backend="gloo", timeout=timedelta(seconds=AGREE_TIMEOUT_S))

    def __call__(self, version: int, data: memoryview, layout: SnapshotLayout) -> None:
        """Hand ``version`` off; then the ranks agree whether every hand-off stored its group, and rank 0
        commits (or aborts) it.

        Why the ranks agree instead of rank 0 asking the keepers (``prepare``): a hand-off returns only
        once every piece of the rank's group is stored and verified by its holder, so the ranks already
        know what phase 1 would ask; one all-reduce of one integer among the trainers replaces a call to
        every keeper (on tiny, snapshots every step, keepers handled ~18 messages per step, 4 of them
        ``prepare``). A rank whose hand-off failed still takes part, with 0, before it raises: its peers
        never wait for it in vain.
        """
        error: BaseException | None = None
        try:
            self._hand_off_payload(version, data, layout)
        except BaseException as e:  # re-raised below, after the ranks agreed
            error = e
        try:
            stored = self._agree(version, error is None)
        except BaseException as e:
            if error is not None:
                raise error from e  # the hand-off's failure is the cause to report, not the peers' reaction
            raise
        if error is not None:
            if self.coordinator is not None and stored is not None:
                # rank 0's own hand-off failed: the others carry on, so drop the version for them now
                with contextlib.suppress(Exception):
                    self.coordinator.settle(version, False)
            raise error
        if self.coordinator is not None:
            self.coordinator.settle(version, stored)

    def abandon(self, version: int) -> None:
        """The snapshot of ``version`` failed on this rank before its hand-off (its copy): the other ranks,
        waiting for every rank's word on it, hear that it failed (called by the snapshot engine)."""
        with contextlib.suppress(Exception):  # the engine raises the copy's error, the one that matters
            self._agree(version, False)

    def _hand_off_payload(self, version: int, data: memoryview, layout: SnapshotLayout) -> None:
        found = self.shared.find(data)
        deadline = time.monotonic() + PUT_WAIT_S
        try:
            try:
                payload = found[0] if found and self.shared_ok else self._bytes(found, data, layout)
                self.hand_off(version, payload, deadline=deadline)
            except SharedBufferUnavailable as e:
                log.warning("rank %d: %s", self.rank, e)
                self.shared_ok = False
                self.hand_off(version, self._bytes(found, data, layout), deadline=deadline)
        except UNREACHABLE as e:
            raise RecoveryError(
                f"snapshot version {version}: a keeper of rank {self.rank}'s group is gone or silent: {e}"
            ) from e

    def _agree(self, version: int, ok: bool) -> bool | None:
        """:func:`agree_stored` on this sink's group; None without one."""
        return None if self._ranks is None else agree_stored(version, ok, self._ranks)

    def hand_off(self, version: int, payload: SharedBuffer | np.ndarray, *, deadline: float) -> None:
        """Hand ``payload`` to the home keeper; under back-pressure, back off and retry until ``deadline``.

        Back-pressure never holds a keeper thread: a busy keeper answers ``BusyError`` at once, and
        this (the rank's hand-off thread) sleeps and tries the hand-off again. A retry is one call: the
        home keeper refuses before encoding while it is busy itself, and re-sends only the pieces
        another holder refused (``spread.py``); asking every holder whether it is still busy would cost
        one call per holder each time. Past ``deadline`` (``time.monotonic()``) it raises, naming the
        version that blocks it.
        """
        delay, started = RETRY_FIRST_S, time.monotonic()
        while True:
            try:
                self._store(version, payload)
                return
            except BusyError:  # a holder is still writing the previous version
                pass
            self.retries += 1
            if time.monotonic() + delay > deadline:
                busy = self._busy_with(version)
                raise RecoveryError(
                    f"snapshot version {version}: rank {self.rank}'s keepers were still writing "
                    f"{busy if busy is not None else 'another version'} when its hand-off gave up after "
                    f"{time.monotonic() - started:.0f} s of back-pressure. The previous version was "
                    "neither committed nor aborted: a rank stopped handing off, or rank 0's commit is stuck "
                    f"(see the logs of rank 0 and of the keepers). Ranks wait up to sink.PUT_WAIT_S={PUT_WAIT_S:.0f} s"
                )
            time.sleep(delay)
            delay = min(2 * delay, RETRY_MAX_S)

    def _store(self, version: int, payload: SharedBuffer | np.ndarray) -> None:
        """One hand-off call to the home keeper (which then sends each piece held on another node).

        A shared buffer is named over the data plane, holders by node id; the first hand-off (or the
        first after the keeper restarted) is refused with ``HolderUnknownError`` and repeated through
        Ray, whose call carries the holders' handles. Bytes always go through Ray (they are the
        fallback for a keeper that cannot map our memory, where the object store carries them).
        """
        if isinstance(payload, SharedBuffer):
            nodes = [node for node, _ in self.holders]
            call = self.home_client.call(
                "store_snapshot_by_node", version, self.rank, payload, nodes, self.codec, self.generation, 0.0
            )
            try:
                call.result(DATA_TIMEOUT_S)
                return
            except HolderUnknownError:
                pass
        self.home_client.call(
            "store_snapshot", version, self.rank, payload, self.holders, self.codec, self.generation, 0.0
        ).result(DATA_TIMEOUT_S)

    @property
    def calls(self) -> int:
        """Ray calls this rank made to hand off its snapshots (first hand-offs, fallbacks, address lookups)."""
        return self.home_client.ray_calls + self._ray_calls

    @property
    def link_calls(self) -> int:
        """Hand-off calls this rank made over the data plane."""
        return self.home_client.link_calls

    def _busy_with(self, version: int) -> int | None:
        """The version some keeper of this rank's group is still writing instead of ``version``, if any."""
        calls = {node: keeper.busy_with.remote(version, self.generation) for node, keeper in self.holders}
        self._ray_calls += len(calls)
        answers = wait_for_all(calls, call=f"busy_with(version {version})", timeout_s=CONTROL_TIMEOUT_S)
        return next((v for v in answers.values() if v is not None), None)

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
        self.links.close()
        if self.coordinator is not None:
            self.coordinator.close()
