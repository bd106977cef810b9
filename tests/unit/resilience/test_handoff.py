"""The zero-copy hand-off: snapshot buffers framed in place, in shared memory another process maps."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from components.resilience.handoff import SharedBuffer, SharedBufferReader, SharedBuffers, SharedBufferUnavailable
from components.resilience.layout import ALIGN, SnapshotLayout
from components.resilience.ownership import owned_names, parameter_sizes
from components.resilience.payload import unframe
from components.resilience.snapshot import SnapshotEngine
from components.resilience.state import pack_into
from tests.unit.resilience.tiny_training import make_state, run_steps

READ_IN_CHILD = """
import sys
from components.resilience.handoff_reader import SharedBuffer, SharedBufferReader
from components.resilience.payload import unframe
pid, fd, nbytes, token = sys.argv[1:]
view = SharedBufferReader().view(SharedBuffer(int(pid), int(fd), int(nbytes), token), generation=1)
layout, buffer = unframe(view)
print(view.flags.writeable, layout.total_bytes, bytes(buffer[:4]).hex())
"""


def _layout_and_state():
    state = make_state()
    run_steps(state, 1)
    owned = owned_names(parameter_sizes(state.module), 0, 1)
    return SnapshotLayout.build(state.module, state.optimizer, owned, world_size=state.world_size), state


class SharedSink:
    """The keeper-facing half of KeeperSink without Ray: buffers from SharedBuffers, read back by a reader."""

    def __init__(self) -> None:
        self.shared, self.reader, self.received = SharedBuffers(), SharedBufferReader(), []

    def allocate_buffer(self, layout):
        return self.shared.allocate(layout)

    def __call__(self, version, data, layout):
        desc, _ = self.shared.find(data)
        view = self.reader.view(desc, generation=1)
        self.received.append((version, bytes(view)))  # what a keeper would encode, byte for byte


def test_a_shared_buffer_is_zeroed_aligned_and_framed_with_its_layout_in_place():
    layout, _ = _layout_and_state()
    shared = SharedBuffers()
    buffer = shared.allocate(layout)
    assert buffer.numel() == layout.total_bytes and not buffer.any()
    assert buffer.data_ptr() % ALIGN == 0  # tensors inside keep their 64-byte alignment
    desc, framed = shared.find(memoryview(buffer.numpy()))
    buffer[:4] = torch.tensor([1, 2, 3, 4], dtype=torch.uint8)
    framed_layout, view = unframe(framed)
    assert framed_layout == layout
    assert bytes(view[:4]) == b"\x01\x02\x03\x04", "the framed payload is the buffer itself, not a copy"
    assert desc.nbytes == framed.size and desc.pid == os.getpid()
    shared.close()


def test_another_process_maps_the_buffer_read_only_and_sees_the_trainers_bytes():
    layout, _ = _layout_and_state()
    shared = SharedBuffers()
    buffer = shared.allocate(layout)
    buffer[:4] = torch.tensor([0xDE, 0xAD, 0xBE, 0xEF], dtype=torch.uint8)
    desc, _ = shared.find(memoryview(buffer.numpy()))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    args = [str(desc.pid), str(desc.fd), str(desc.nbytes), desc.token]
    out = subprocess.run([sys.executable, "-c", READ_IN_CHILD, *args], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", str(layout.total_bytes), "deadbeef"]
    shared.close()


def test_a_buffer_the_keeper_cannot_open_raises_unavailable_naming_the_fallback():
    reader = SharedBufferReader()
    with pytest.raises(SharedBufferUnavailable, match="falls back to sending the bytes"):
        reader.view(SharedBuffer(os.getpid(), 10_000, 64, "gone"), generation=1)


def test_the_reader_forgets_buffers_of_older_generations_and_released_ones():
    layout, _ = _layout_and_state()
    shared = SharedBuffers()
    descs = [shared.find(memoryview(shared.allocate(layout).numpy()))[0] for _ in range(2)]
    reader = SharedBufferReader()
    reader.view(descs[0], generation=1)
    assert len(reader) == 1
    reader.view(descs[1], generation=2)  # a restarted worker group: the dead trainer's mapping goes
    assert len(reader) == 1
    reader.release([descs[1].token])
    assert len(reader) == 0
    shared.close()


def test_engine_with_a_sharing_sink_hands_off_the_framed_state_of_its_step():
    layout, state = _layout_and_state()
    sink = SharedSink()
    engine = SnapshotEngine(max_in_flight=2, sink=sink)
    engine.begin(state)
    reference = torch.zeros(layout.total_bytes, dtype=torch.uint8)
    pack_into(reference, layout, state)
    engine.wait()
    engine.close()
    ((version, payload),) = sink.received
    got_layout, got = unframe(payload)
    assert (version, got_layout) == (state.step, layout)
    assert np.array_equal(np.frombuffer(got, np.uint8), reference.numpy())
