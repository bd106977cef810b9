"""The asynchronous snapshot engine: consistent at its step while training goes on, bounded, wired
into the loop's events."""

import threading
import time

import pytest
import torch

from components.resilience.layout import SnapshotLayout
from components.resilience.ownership import owned_names, parameter_sizes
from components.resilience.piece import checksum
from components.resilience.snapshot import SnapshotEngine
from components.resilience.snapshot_callback import SnapshotCallback
from components.resilience.state import pack_into, unpack_from
from components.training.callbacks import Callback
from tests.unit.resilience.tiny_training import make_state, run_steps

COPY_DELAY = 0.05


class LateCopyEngine(SnapshotEngine):
    """The worst case: the copy starts only once the trainer has reached the next optimizer step
    (and a little later), so without the fence the optimizer would write before the copy reads."""

    def __init__(self) -> None:
        super().__init__(inline_copy_bytes=0)  # the background copy, even of this small state
        self.trainer_at_optimizer = threading.Event()

    def _copy(self, views, tensors):
        self.trainer_at_optimizer.wait(30)
        time.sleep(COPY_DELAY)
        super()._copy(views, tensors)

    def fence(self) -> None:
        self.trainer_at_optimizer.set()
        super().fence()


class Fence(Callback):
    def __init__(self, engine: SnapshotEngine) -> None:
        self.engine = engine

    def pre_optimizer_step(self, state) -> None:
        self.engine.fence()


def synchronous_pack(state):
    """The whole state of one rank (world size 1) packed on this thread: what a snapshot must equal."""
    owned = owned_names(parameter_sizes(state.module), 0, 1)
    layout = SnapshotLayout.build(state.module, state.optimizer, owned, world_size=1)
    reference = torch.zeros(layout.total_bytes, dtype=torch.uint8)
    pack_into(reference, layout, state)
    return layout, reference


def test_async_snapshot_equals_a_synchronous_pack_at_its_step_while_training_continues():
    state = make_state()
    run_steps(state, 2)
    layout, reference = synchronous_pack(state)
    weights_at_2 = state.module.model.norm.weight.detach().clone()

    engine = LateCopyEngine()
    engine.begin(state)
    run_steps(state, 2, [Fence(engine)])
    snapshot = engine.wait()
    engine.close()

    assert snapshot.version == 2
    assert snapshot.layout == layout
    assert snapshot.checksum == checksum(memoryview(reference.numpy()))
    assert not torch.equal(state.module.model.norm.weight, weights_at_2)  # training did move on
    assert engine.stats.fence_seconds >= COPY_DELAY  # the optimizer step waited for the copy


def test_a_small_state_is_copied_before_begin_returns_and_equals_a_synchronous_pack():
    state = make_state()
    run_steps(state, 2)
    layout, reference = synchronous_pack(state)

    engine = SnapshotEngine(inline_copy_bytes=layout.total_bytes)
    engine.begin(state)
    assert engine.stats.inline_copies == 1 and engine.stats.copy_seconds > 0  # copied before begin returned
    run_steps(state, 1, [Fence(engine)])
    snapshot = engine.wait()
    engine.close()

    assert snapshot.version == 2
    assert snapshot.checksum == checksum(memoryview(reference.numpy()))


def test_a_snapshot_after_the_optimizer_state_was_replaced_holds_the_new_state():
    state = make_state()
    run_steps(state, 2)
    engine = SnapshotEngine()
    engine.begin(state)
    engine.wait()
    saved = state.optimizer.state_dict()
    for per_param in saved["state"].values():
        per_param["exp_avg"] = per_param["exp_avg"] * 2  # new tensors, other values
    state.optimizer.load_state_dict(saved)
    reference = torch.zeros(engine.layout.total_bytes, dtype=torch.uint8)
    pack_into(reference, engine.layout, state)

    engine.begin(state)
    snapshot = engine.wait()
    engine.close()
    assert snapshot.checksum == checksum(memoryview(reference.numpy()))


def test_begin_blocks_while_max_in_flight_snapshots_are_in_flight():
    state = make_state()
    run_steps(state, 1)
    release = threading.Event()
    engine = SnapshotEngine(max_in_flight=2, sink=lambda version, data, layout: release.wait(30))
    engine.begin(state)
    engine.begin(state)
    assert engine.in_flight == 2

    third = threading.Thread(target=engine.begin, args=(state,))
    third.start()
    third.join(0.5)
    assert third.is_alive()  # both buffers are held by snapshots whose sink has not returned
    release.set()
    third.join(30)
    assert not third.is_alive()
    engine.close()
    assert engine.stats.completed == 3 and engine.in_flight == 0


def test_coalescing_skips_a_due_snapshot_while_the_previous_is_in_flight_and_takes_the_next_once_it_is_done():
    state = make_state()
    run_steps(state, 1)
    release, handed = threading.Event(), []
    engine = SnapshotEngine(
        sink=lambda version, data, layout: (release.wait(30), handed.append(version)), coalesce=True
    )
    engine.begin(state)  # step 1: taken, its hand-off waits
    for _ in range(3):
        run_steps(state, 1)
        engine.begin(state)  # returns at once: skipped, no copy, no wait
    assert engine.stats.skipped == 3 and engine.stats.snapshots == 1 and engine.newest_done is None
    release.set()
    engine.wait()
    run_steps(state, 1)
    engine.begin(state)  # the buffer is free again: taken
    engine.close()
    assert handed == [1, 5] and engine.newest_done == 5 and engine.stats.skipped == 3


def test_a_failing_sink_is_raised_on_the_trainer_thread():
    state = make_state()
    run_steps(state, 1)

    def unreachable_keeper(version, data, layout):
        raise ConnectionError(f"keeper unreachable for version {version}")

    engine = SnapshotEngine(sink=unreachable_keeper)
    engine.begin(state)
    with pytest.raises(ConnectionError, match="version 1"):
        engine.close()


class AgreeingSink:
    """A sink with the agreement hook (as KeeperSink): records what it was handed and what was abandoned."""

    def __init__(self) -> None:
        self.handed: list[int] = []
        self.abandoned: list[int] = []

    def __call__(self, version, data, layout) -> None:
        self.handed.append(version)

    def abandon(self, version: int) -> None:
        self.abandoned.append(version)


class FailingCopyEngine(SnapshotEngine):
    def _copy(self, views, tensors):
        raise OSError("copy failed")


@pytest.mark.parametrize("inline", [False, True], ids=["background-copy", "inline-copy"])
def test_a_failed_copy_tells_the_sink_which_version_it_abandons(inline):
    state = make_state()
    run_steps(state, 1)
    sink = AgreeingSink()
    engine = FailingCopyEngine(sink=sink, inline_copy_bytes=1 << 30 if inline else 0)
    if inline:  # raised by begin itself; the sink still hears of it, on the hand-off thread
        with pytest.raises(OSError, match="copy failed"):
            engine.begin(state)
        engine.close()
    else:
        engine.begin(state)
        with pytest.raises(OSError, match="copy failed"):
            engine.close()
    assert sink.abandoned == [state.step] and sink.handed == []


def test_each_rank_snapshots_only_the_parameters_it_owns():
    names = []
    for rank in range(2):
        state = make_state(rank=rank, world_size=2)
        run_steps(state, 1)
        engine = SnapshotEngine()
        engine.begin(state)
        engine.close()
        names.append({e.name for e in engine.layout.entries})
    assert not names[0] & names[1]
    assert names[0] | names[1] == {name for name, _ in parameter_sizes(state.module)}


def test_callback_keeps_the_newest_snapshot_and_it_restores_the_state_of_its_step():
    state = make_state()
    callback = SnapshotCallback(every=2)
    callback.pre_train(state)
    run_steps(state, 5, [callback])
    callback.close()
    version, data, layout = callback.kept.latest()
    assert version == 4

    expected = make_state()
    run_steps(expected, 4)
    restored = make_state(seed=1)
    unpack_from(data, layout, restored)
    assert restored.step == 4
    for (name, p), (_, q) in zip(expected.module.named_parameters(), restored.module.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    stats = callback.state_dict()
    assert stats["snapshots"] == stats["completed"] == 2
    assert stats["bytes_per_snapshot"] == layout.total_bytes
