"""Snapshot keepers: the guarded rules of the keeper base (plain Python), then the per-node keeper
actors on a 4-node Ray cluster (placement, surviving a worker crash, calls under load and
back-pressure, the measured memory check, release after a failed fit, losing only the removed node)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from components.common.config import load_config
from components.common.errors import ConfigError, DataError, RecoveryError
from components.resilience.keeper import MIB, IncompleteVersionError, MemoryKeeper, MissingPieceError
from components.resilience.piece import Piece, PieceId


def piece(version: int, group: int = 0, index: int = 0, size: int = 1024) -> Piece:
    data = (f"v{version}g{group}i{index}:".encode() * size)[:size]
    return Piece.make(PieceId(version, group, index), data)


def write_version(keeper: MemoryKeeper, version: int, count: int = 3, size: int = 1024) -> set[PieceId]:
    pieces = [piece(version, 0, i, size) for i in range(count)]
    for p in pieces:
        keeper.put(p)
    return {p.id for p in pieces}


def damaged(p: Piece) -> Piece:
    return Piece(p.id, b"X" + p.data[1:], p.checksum, p.payload_size)


# ---------------------------------------------------------------------- keeper base rules


def test_put_refuses_a_piece_whose_bytes_do_not_match_its_checksum():
    keeper = MemoryKeeper(budget_mb=1, expected_version_bytes=0)
    with pytest.raises(DataError, match="checksum"):
        keeper.put(damaged(piece(1)))
    assert keeper.memory_used() == 0


def test_put_keeps_its_own_copy_of_a_view_and_refuses_a_damaged_one():
    keeper = MemoryKeeper(budget_mb=1, expected_version_bytes=0)
    buffer = np.frombuffer(piece(1).data, dtype=np.uint8).copy()
    view = Piece.make(PieceId(1, 0, 0), buffer[:])  # as a piece arrives from Ray's object store
    keeper.put(view)
    buffer[0] ^= 0xFF  # the sender reuses its buffer: the keeper's copy must not change
    keeper.commit(1, {view.id})
    assert keeper.get(view.id).is_intact() and not np.shares_memory(keeper.get(view.id).data, buffer)
    with pytest.raises(DataError, match="do not match its checksum"):
        keeper.put(Piece(PieceId(2, 0, 0), buffer[:], view.checksum, len(buffer)))


def test_commit_makes_a_version_readable_only_once_every_expected_piece_is_stored():
    keeper = MemoryKeeper(budget_mb=1, expected_version_bytes=0)
    ids = write_version(keeper, 1)
    with pytest.raises(MissingPieceError, match="not committed"):
        keeper.get(piece(1).id)
    keeper.commit(1, ids)
    assert keeper.newest_committed() == 1
    assert keeper.get(piece(1, 0, 2).id) == piece(1, 0, 2)


def test_incomplete_commit_raises_and_keeps_the_previous_version_readable():
    keeper = MemoryKeeper(budget_mb=1, expected_version_bytes=0)
    keeper.commit(1, write_version(keeper, 1))
    partial = write_version(keeper, 2, count=2)
    with pytest.raises(IncompleteVersionError, match=r"1 of 3 expected pieces missing"):
        keeper.commit(2, partial | {PieceId(2, 0, 2)})
    assert keeper.newest_committed() == 1
    assert keeper.get(PieceId(1, 0, 2)) == piece(1, 0, 2)


def test_committing_a_version_drops_the_older_one_and_its_memory():
    keeper = MemoryKeeper(budget_mb=1, expected_version_bytes=0)
    keeper.commit(1, write_version(keeper, 1, size=1000))
    keeper.commit(2, write_version(keeper, 2, size=1000))
    assert keeper.memory_used() == 3000
    assert keeper.pieces(1) == []
    with pytest.raises(MissingPieceError):
        keeper.get(PieceId(1, 0, 0))


def test_keeper_holds_at_most_the_committed_version_and_the_one_being_written():
    keeper = MemoryKeeper(budget_mb=1, expected_version_bytes=0)
    keeper.commit(1, write_version(keeper, 1))
    write_version(keeper, 2, count=1)
    with pytest.raises(RecoveryError, match="version 2 is still being written"):
        keeper.put(piece(3))
    keeper.drop(2)
    keeper.put(piece(3))
    assert keeper.status().writing == 3 and keeper.status().committed == 1


def test_piece_not_newer_than_the_committed_version_is_refused():
    keeper = MemoryKeeper(budget_mb=1, expected_version_bytes=0)
    keeper.commit(5, write_version(keeper, 5))
    with pytest.raises(RecoveryError, match="not newer than the committed version 5"):
        keeper.put(piece(4))


def test_the_same_piece_again_after_its_version_was_committed_is_accepted_as_a_retry():
    keeper = MemoryKeeper(budget_mb=1, expected_version_bytes=0)
    keeper.commit(5, write_version(keeper, 5))
    used = keeper.memory_used()
    keeper.put(piece(5, 0, 1))  # a hand-off retried after one holder answered busy
    assert keeper.memory_used() == used and keeper.newest_committed() == 5
    with pytest.raises(RecoveryError, match="not newer than the committed version 5"):
        keeper.put(piece(5, 0, 1, size=512))  # other bytes under the same id: not a retry


def test_held_lists_stored_pieces_unverified_and_the_commit_still_refuses_a_damaged_one():
    keeper = MemoryKeeper(budget_mb=1, expected_version_bytes=0)
    ids = write_version(keeper, 1)
    keeper.inject_corruption(PieceId(1, 0, 1))
    assert keeper.held(1) == [PieceId(1, 0, 0), PieceId(1, 0, 1), PieceId(1, 0, 2)]
    with pytest.raises(IncompleteVersionError):
        keeper.commit(1, ids)


def test_corrupted_piece_is_reported_missing_on_get_and_left_out_of_pieces():
    keeper = MemoryKeeper(budget_mb=1, expected_version_bytes=0)
    keeper.commit(1, write_version(keeper, 1))
    keeper.inject_corruption(PieceId(1, 0, 1))
    assert keeper.pieces(1) == [PieceId(1, 0, 0), PieceId(1, 0, 2)]
    with pytest.raises(MissingPieceError):
        keeper.get(PieceId(1, 0, 1))


def test_commit_treats_a_piece_damaged_after_put_as_missing():
    keeper = MemoryKeeper(budget_mb=1, expected_version_bytes=0)
    keeper.commit(1, write_version(keeper, 1))
    ids = write_version(keeper, 2)
    keeper.inject_corruption(PieceId(2, 0, 0))
    with pytest.raises(IncompleteVersionError, match=r"\(group 0, index 0\)"):
        keeper.commit(2, ids)
    assert keeper.newest_committed() == 1


def test_budget_below_two_versions_fails_at_startup_naming_the_fix(make_config):
    cfg = make_config("resilience.keeper_memory_mb=10")
    with pytest.raises(ConfigError) as error:
        MemoryKeeper(cfg.resilience.keeper_memory_mb, expected_version_bytes=6 * MIB)
    message = str(error.value)
    assert "resilience.keeper_memory_mb=10" in message
    assert "at least 12" in message
    assert "more nodes" in message and "resilience.k" in message


def test_start_keepers_refuses_a_small_budget_before_starting_any_actor(make_config):
    from components.resilience.keeper_actor import start_keepers

    with pytest.raises(ConfigError, match="resilience.keeper_memory_mb=10 is too small"):
        start_keepers("never", make_config("resilience.keeper_memory_mb=10"), expected_version_bytes=8 * MIB)


def test_put_beyond_the_budget_is_refused_and_stores_nothing():
    keeper = MemoryKeeper(budget_mb=1, expected_version_bytes=MIB // 4)
    keeper.put(piece(1, size=MIB // 2))
    with pytest.raises(ConfigError, match="budget exceeded"):
        keeper.put(piece(1, index=1, size=MIB // 2 + 1))
    assert keeper.memory_used() == MIB // 2 and keeper.pieces(1) == [PieceId(1, 0, 0)]


def test_readers_see_only_whole_committed_versions_while_a_writer_commits():
    keeper = MemoryKeeper(budget_mb=4, expected_version_bytes=0)
    keeper.commit(0, write_version(keeper, 0, count=4, size=4096))
    enough, deadline = threading.Event(), time.monotonic() + 20
    seen: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        v = 1
        while not enough.is_set() and time.monotonic() < deadline:
            keeper.commit(v, write_version(keeper, v, count=4, size=4096))
            v += 1

    def reader() -> None:
        while not enough.is_set() and time.monotonic() < deadline:
            v = keeper.newest_committed()
            try:
                got = [keeper.get(PieceId(v, 0, i)) for i in range(4)]
            except MissingPieceError:
                continue  # superseded while reading: never a mix, the read simply starts over
            except Exception as e:  # anything else is the bug this test looks for
                errors.append(e)
                enough.set()
                return
            if got != [piece(v, 0, i, 4096) for i in range(4)]:
                errors.append(AssertionError(f"torn read of version {v}"))
            seen.append(v)
            if len(set(seen)) >= 100:
                enough.set()

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(seen)) >= 100, "readers should have seen many versions go by"
    assert keeper.status().pieces == 4


def test_every_keeper_call_runs_in_a_named_concurrency_group():
    from components.resilience.keeper_actor import CALL_GROUPS, KEEPER_CONCURRENCY, NodeKeeper, keeper_actor_class

    public = {name for name in dir(NodeKeeper) if not name.startswith("_") and callable(getattr(NodeKeeper, name))}
    grouped = [name for names in CALL_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(public), "a keeper call left out would share the actor's one default thread"
    assert set(CALL_GROUPS) == set(KEEPER_CONCURRENCY)
    # what Ray itself will use (read from the actor class; no Ray cluster needed)
    meta = keeper_actor_class().__ray_metadata__
    assert meta.method_meta.concurrency_group_for_methods == {
        name: group for group, names in CALL_GROUPS.items() for name in names
    }
    assert meta.concurrency_groups == KEEPER_CONCURRENCY


# ---------------------------------------------------------------------- keeper actors on a Ray cluster

RUN = "keeper-test"


@pytest.fixture(scope="module")
def keepers(ray_cluster):
    from components.resilience.keeper_actor import start_keepers, stop_keepers

    cfg = load_config("tiny", ["resilience.keeper_memory_mb=128"])
    yield start_keepers(RUN, cfg, expected_version_bytes=32 * MIB)
    stop_keepers(RUN)


def test_one_keeper_per_node_lands_on_its_node(keepers):
    import ray

    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert set(keepers) == alive and len(alive) == 4
    assert ray.get([k.node_id.remote() for k in keepers.values()]) == list(keepers)


def test_start_keepers_again_finds_the_same_detached_actors(keepers):
    from components.resilience.keeper_actor import start_keepers

    again = start_keepers(RUN, load_config("tiny", ["resilience.keeper_memory_mb=128"]), expected_version_bytes=0)
    assert {n: k._actor_id for n, k in again.items()} == {n: k._actor_id for n, k in keepers.items()}


def test_keeper_survives_the_crash_of_the_worker_that_wrote_to_it(keepers):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node_id, keeper = next(iter(keepers.items()))

    @ray.remote(num_cpus=0)
    class TrainingWorker:
        def snapshot(self, keeper, version: int) -> None:
            pieces = [piece(version, 0, i, 256 * 1024) for i in range(2)]
            ray.get([keeper.put.remote(p) for p in pieces])
            ray.get(keeper.commit.remote(version, {p.id for p in pieces}))

    worker = TrainingWorker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
    ray.get(worker.snapshot.remote(keeper, 10))
    ray.kill(worker)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(worker.snapshot.remote(keeper, 11), timeout=30)
    assert ray.get(keeper.get.remote(PieceId(10, 0, 1))) == piece(10, 0, 1, 256 * 1024)
    ray.get(keeper.drop.remote(10))


def test_keeper_encodes_a_trainers_shared_buffer_in_place_and_keeps_it_after_the_trainer_dies(keepers):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from components.resilience.codec import make_codec
    from components.resilience.layout import SnapshotLayout

    nodes = list(keepers)[:3]  # k=2 data pieces and the parity on three nodes; the trainer on the first
    holders = [(n, keepers[n]) for n in nodes]

    @ray.remote(num_cpus=0)
    class TrainingWorker:
        def snapshot(self, version: int) -> bytes:
            from components.resilience.handoff import SharedBuffers

            self.shared = SharedBuffers()  # kept: the trainer holds its buffer until it dies
            buffer = self.shared.allocate(SnapshotLayout((), meta_offset=0, meta_capacity=3 * MIB))
            buffer.copy_(torch.randint(0, 256, buffer.shape, dtype=torch.uint8))
            desc, framed = self.shared.find(memoryview(buffer.numpy()))
            ray.get(keepers[nodes[0]].store_snapshot.remote(version, 0, desc, holders, ("xor", 2, 1), 0, 30.0))
            return framed.tobytes()

    worker = TrainingWorker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[0], soft=False)).remote()
    payload = ray.get(worker.snapshot.remote(30))
    ray.kill(worker)  # the trainer's memfd and its object-store arguments die with it; the pieces must not
    ids = [PieceId(30, 0, i) for i in range(3)]
    for i, (_, keeper) in enumerate(holders):
        ray.get(keeper.commit.remote(30, {ids[i]}))
    pieces = [ray.get(keeper.get.remote(ids[i])) for i, (_, keeper) in enumerate(holders)]
    codec = make_codec("xor", 2, 1)
    assert codec.decode(pieces[:2]) == payload
    assert codec.decode(pieces[1:]) == payload
    # taking a trainer's hand-off (its descriptor, the layout in the frame) loaded no torch into the keepers
    assert not any(ray.get([keeper.imported.remote("torch") for _, keeper in holders]))
    for keeper in keepers.values():
        ray.get(keeper.drop.remote(30))


def test_a_buffer_the_keeper_cannot_map_is_refused_by_name_and_the_bytes_are_taken_instead(keepers):
    import numpy as np
    import ray

    from components.resilience.codec import make_codec
    from components.resilience.handoff import SharedBuffer, SharedBufferUnavailable

    node, keeper = next(iter(keepers.items()))
    holders = [(node, keeper), (node, keeper)]  # k=1, m=1: both pieces here, to keep the test small
    gone = SharedBuffer(pid=1, fd=10_000, nbytes=64, token="gone")
    with pytest.raises(SharedBufferUnavailable, match="falls back to sending the bytes"):
        ray.get(keeper.store_snapshot.remote(31, 0, gone, holders, ("xor", 1, 1), 0, 5.0))
    payload = np.random.default_rng(0).integers(0, 256, MIB, dtype=np.uint8)  # read in the object store
    assert ray.get(keeper.store_snapshot.remote(31, 0, payload, holders, ("xor", 1, 1), 0, 5.0)) == 2
    ray.get(keeper.commit.remote(31, {PieceId(31, 0, 0), PieceId(31, 0, 1)}))
    assert make_codec("xor", 1, 1).decode([ray.get(keeper.get.remote(PieceId(31, 0, 0)))]) == payload.tobytes()
    ray.get(keeper.drop.remote(31))


def test_put_get_throughput_through_the_actor_for_a_16_mib_piece(keepers):
    """A rank writes to its own node's keeper (local); parity pieces go to other nodes' (remote)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    remote = next(n for n in keepers if n != here)
    payload = os.urandom(16 * MIB)
    for where, keeper in (("local", keepers[here]), ("remote", keepers[remote])):
        ray.get(keeper.put.remote(Piece.make(PieceId(20, 0, 0), payload)))  # warm-up
        ray.get(keeper.drop.remote(20))
        rounds, put_s, get_s = 4, 0.0, 0.0
        for v in range(21, 21 + rounds):
            p = Piece.make(PieceId(v, 0, 0), payload)
            t0 = time.perf_counter()
            ray.get(keeper.put.remote(p))
            ray.get(keeper.commit.remote(v, {p.id}))
            t1 = time.perf_counter()
            got = ray.get(keeper.get.remote(p.id))
            put_s, get_s = put_s + t1 - t0, get_s + time.perf_counter() - t1
            assert got.data == payload and got.is_intact()
        ray.get(keeper.drop.remote(20 + rounds))
        print(
            f"\n{where} keeper, 16 MiB piece: put+commit {rounds * 16 / put_s:.0f} MiB/s, get {rounds * 16 / get_s:.0f} MiB/s"
        )


RANKS_PER_NODE = 8  # a GPU node's ranks, all handing off to their node's keeper


def _sinks(keepers, ranks: int = RANKS_PER_NODE):
    """``ranks`` ranks on one node whose groups (xor, k=1, m=1) put piece 0 there and parity next door."""
    from components.resilience.placement import Placement
    from components.resilience.sink import KeeperSink

    home, other = list(keepers)[:2]
    placement = Placement((home, other), ((home, other),) * ranks)
    sinks = [
        KeeperSink(rank=r, keepers=keepers, placement=placement, codec=("xor", 1, 1), generation=0)
        for r in range(ranks)
    ]
    return sinks, placement


def _payload(version: int, rank: int) -> bytes:
    from components.resilience.layout import SnapshotLayout
    from components.resilience.payload import frame

    return frame(SnapshotLayout((), meta_offset=0, meta_capacity=0), bytes([version % 256, rank]) * 32 * 1024)


def test_eight_ranks_under_back_pressure_retry_and_hand_off_once_the_commit_frees_the_keepers(keepers):
    import ray

    from components.resilience.commit import commit_version

    sinks, placement = _sinks(keepers)
    involved = {node: keepers[node] for node in placement.ring}
    for sink in sinks:
        sink.hand_off(40, _payload(40, sink.rank), deadline=time.monotonic() + 60)
    errors: list[BaseException] = []

    def next_snapshot(sink) -> None:
        try:
            sink.hand_off(41, _payload(41, sink.rank), deadline=time.monotonic() + 120)
        except BaseException as e:
            errors.append(e)

    ranks = [threading.Thread(target=next_snapshot, args=(sink,)) for sink in sinks]
    try:
        for t in ranks:
            t.start()
        waited = time.monotonic() + 60
        while not all(sink.retries for sink in sinks) and time.monotonic() < waited:
            time.sleep(0.01)
        assert all(sink.retries for sink in sinks), "every rank should have been told to retry"
        statuses = ray.get([k.status.remote() for k in involved.values()], timeout=30)
        assert [s.writing for s in statuses] == [40, 40], "version 41 must wait for 40 to be decided"
        assert commit_version(involved, 40, placement.expected(40)).committed
        for t in ranks:
            t.join(timeout=120)
        assert errors == [] and not any(t.is_alive() for t in ranks)
        assert commit_version(involved, 41, placement.expected(41)).committed
    finally:
        for t in ranks:
            t.join(timeout=120)
        ray.get([k.drop.remote(v) for k in involved.values() for v in (40, 41)], timeout=30)


def test_a_hand_off_refused_by_one_busy_holder_retries_only_that_piece(keepers):
    import ray

    from components.resilience.codec import make_codec
    from components.resilience.keeper import BusyError

    nodes = sorted(keepers)[:3]
    holders = [(n, keepers[n]) for n in nodes]
    home, busy = keepers[nodes[0]], keepers[nodes[2]]  # the parity's holder is still writing version 70
    payload = np.frombuffer(_payload(71, 0), dtype=np.uint8)
    ray.get(busy.put.remote(piece(70, group=5)), timeout=30)
    try:
        with pytest.raises(BusyError, match="1 of its pieces were refused"):
            ray.get(home.store_snapshot.remote(71, 0, payload, holders, ("xor", 2, 1), 0, 0.0), timeout=60)
        ray.get(busy.drop.remote(70), timeout=30)
        # the retry sends the kept parity piece alone: nothing encoded or sent twice
        assert ray.get(home.store_snapshot.remote(71, 0, payload, holders, ("xor", 2, 1), 0, 0.0), timeout=60) == 1
        ids = [PieceId(71, 0, i) for i in range(3)]
        for (_, keeper), pid in zip(holders, ids, strict=True):
            ray.get(keeper.commit.remote(71, {pid}), timeout=30)
        parity_and_one = [ray.get(holders[i][1].get.remote(ids[i]), timeout=30) for i in (1, 2)]
        assert make_codec("xor", 2, 1).decode(parity_and_one) == payload.tobytes()
    finally:
        ray.get([k.drop.remote(v) for _, k in holders for v in (70, 71)], timeout=30)


def test_commit_and_status_are_answered_while_every_data_thread_is_busy(keepers):
    import ray

    from components.resilience.keeper_actor import KEEPER_CONCURRENCY

    keeper = next(iter(keepers.values()))
    ray.get(keeper.put.remote(piece(50)), timeout=30)
    # Puts that wait in the keeper for version 50 to be decided occupy every data thread: a keeper
    # with a single pool of threads could not even run the commit that ends their wait, and the
    # puts would time out. (One call more would stall Ray's dispatch to the whole actor: see
    # keeper_actor.py; that is why the product's data calls never wait in a keeper.)
    waiting = [keeper.put.remote(piece(51, index=i), wait_s=60.0) for i in range(KEEPER_CONCURRENCY["data"])]
    try:
        assert ray.get(keeper.status.remote(), timeout=30).writing == 50
        ray.get(keeper.commit.remote(50, {PieceId(50, 0, 0)}), timeout=30)
        assert ray.get(waiting, timeout=60) == [None] * len(waiting)
        assert ray.get(keeper.status.remote(), timeout=30).writing == 51
    finally:
        ray.get([keeper.drop.remote(v) for v in (50, 51)], timeout=60)


def test_a_hand_off_under_back_pressure_gives_up_at_its_deadline_naming_the_blocking_version(keepers):
    import ray

    (sink,), _ = _sinks(keepers, ranks=1)
    ray.get(sink.home.put.remote(piece(60)), timeout=30)
    try:
        with pytest.raises(RecoveryError, match="still writing 60 when its hand-off gave up"):
            sink.hand_off(61, _payload(61, 0), deadline=time.monotonic() + 0.3)
        assert sink.retries > 0
        assert ray.get(sink.home.status.remote(), timeout=30).writing == 60
    finally:
        # the first, optimistic attempt may have left pieces of 61 on the holders that were free
        ray.get([keeper.drop.remote(v) for _, keeper in sink.holders for v in (60, 61)], timeout=30)


def test_a_version_the_ranks_agreed_was_stored_commits_and_one_they_agreed_failed_is_dropped(keepers):
    import ray

    from components.resilience.sink import Coordinator

    (sink,), placement = _sinks(keepers, ranks=1)
    involved = {node: keepers[node] for node in placement.ring}
    coordinator = Coordinator(involved, placement, None)
    try:
        sink.hand_off(80, _payload(80, 0), deadline=time.monotonic() + 60)
        assert coordinator.settle(80, stored=True).committed
        assert coordinator.link_calls == len(placement.expected(80))  # the commit round only: no prepare
        sink.hand_off(81, _payload(81, 0), deadline=time.monotonic() + 60)
        assert not coordinator.settle(81, stored=False).committed  # another rank's hand-off failed
        assert coordinator.aborted == 1
        statuses = ray.get([k.status.remote() for k in involved.values()], timeout=30)
        assert {s.writing for s in statuses} == {None}  # 81 dropped everywhere: the next version is not refused
        assert {s.committed for s in statuses if s.pieces} == {80}
    finally:
        ray.get([k.drop.remote(v) for k in involved.values() for v in (80, 81)], timeout=30)


def test_first_commit_checks_the_measured_need_against_the_budget_naming_the_value_to_set(keepers):
    import ray

    from components.resilience.sink import Coordinator

    (sink,), placement = _sinks(keepers, ranks=1)
    involved = {node: keepers[node] for node in placement.ring}
    try:
        # 16 MiB fit twice with their transit in the 128 MiB budget; 30 MiB do not (2 x 30 + 60 > 115)
        sink.hand_off(70, bytes(16 * MIB), deadline=time.monotonic() + 60)
        assert Coordinator(involved, placement, None).settle(70).committed
        sink.hand_off(71, bytes(30 * MIB), deadline=time.monotonic() + 60)
        with pytest.raises(ConfigError, match=r"resilience.keeper_memory_mb=128 is too small: measured on node") as e:
            Coordinator(involved, placement, None).settle(71)
        assert "Set resilience.keeper_memory_mb to at least 134" in str(e.value)
    finally:
        ray.get([k.drop.remote(v) for k in involved.values() for v in (70, 71)], timeout=30)


def test_keepers_are_released_when_the_fit_raises(make_config, tiny_dataset, tmp_path, keepers):
    import ray

    from components.resilience.driver import keeper_run_name, training_callbacks
    from tests.unit.resilience.cluster import train_spec

    def running(run: str) -> int:
        return sum(a["name"].startswith(f"lmforge-keeper-{run}-") for a in ray.util.list_named_actors(True))

    spec = train_spec(make_config("resilience.enabled=true", "resilience.keeper_memory_mb=64"), tiny_dataset, tmp_path)
    run = keeper_run_name(spec.checkpoint_uri, spec.stage)
    with pytest.raises(RuntimeError, match="the fit failed"), training_callbacks(spec):
        assert running(run) == 4
        raise RuntimeError("the fit failed")
    assert running(run) == 0
    assert running(RUN) == 4, "another run's keepers are left alone"


def test_clients_sharing_an_address_book_ask_a_keepers_address_once_and_again_after_it_is_forgotten(keepers):
    from components.resilience.dataplane import KeeperLinks
    from components.resilience.keeper_client import AddressBook, KeeperClient

    node, handle = next(iter(keepers.items()))
    book, links = AddressBook(), KeeperLinks(timeout_s=30)
    try:
        first, second = (KeeperClient(node, handle, links, book) for _ in range(2))
        assert first.call("pieces", 9999).result(30) == [] and second.call("pieces", 9999).result(30) == []
        assert book.lookups == 1 and (first.link_calls, second.link_calls) == (1, 1)
        book.forget(node)  # as after a failed connection: the keeper may listen on a new port
        second.call("pieces", 9999).result(30)
        assert book.lookups == 2 and second.ray_calls == 1
    finally:
        links.close()


def test_a_node_that_joins_during_the_fit_gets_the_runs_keeper_before_any_restart_asks(
    make_config, tiny_dataset, tmp_path, ray_cluster, keepers
):
    import ray

    from components.resilience.driver import keeper_run_name, training_callbacks
    from components.resilience.keeper_actor import keeper_name, keeper_namespace
    from tests.unit.resilience.cluster import train_spec

    spec = train_spec(make_config("resilience.enabled=true", "resilience.keeper_memory_mb=64"), tiny_dataset, tmp_path)
    run = keeper_run_name(spec.checkpoint_uri, spec.stage)
    with training_callbacks(spec):
        extra = ray_cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        try:
            deadline = time.monotonic() + 60  # a generous bound on a busy box, not a speed check
            while time.monotonic() < deadline:
                try:
                    keeper = ray.get_actor(keeper_name(run, extra.node_id), namespace=keeper_namespace(run))
                    break
                except ValueError:
                    time.sleep(0.2)
            else:
                pytest.fail("no keeper was started on the node that joined")
            assert ray.get(keeper.node_id.remote(), timeout=60) == extra.node_id
        finally:
            ray_cluster.remove_node(extra)


def test_removing_a_node_loses_only_that_nodes_keeper(ray_cluster, keepers):
    import ray

    from components.resilience.keeper_actor import start_keepers

    extra = ray_cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    ray_cluster.wait_for_nodes()
    all_keepers = start_keepers(RUN, load_config("tiny", ["resilience.keeper_memory_mb=128"]), expected_version_bytes=0)
    assert extra.node_id in all_keepers and len(all_keepers) == 5
    for k in all_keepers.values():
        ray.get(k.put.remote(piece(30)))
        ray.get(k.commit.remote(30, {PieceId(30, 0, 0)}))
    ray_cluster.remove_node(extra)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(all_keepers[extra.node_id].get.remote(PieceId(30, 0, 0)), timeout=60)
    for node_id, k in keepers.items():
        assert ray.get(k.get.remote(PieceId(30, 0, 0)), timeout=30) == piece(30), node_id
        ray.get(k.drop.remote(30))
