"""Packing a rank's training state into a flat buffer and restoring it into a live model."""

import base64
import json
import random
import struct

import numpy as np
import pytest
import torch

from components.common.errors import RecoveryError
from components.resilience.layout import SnapshotLayout
from components.resilience.ownership import parameter_sizes
from components.resilience.state import (
    MetaEncoder,
    capture_meta,
    copy_tensors,
    pack_into,
    read_meta,
    unpack_from,
    write_meta,
)
from tests.unit.resilience.tiny_training import make_state, run_steps


def _packed(state) -> tuple[torch.Tensor, SnapshotLayout]:
    layout = SnapshotLayout.build(state.module, state.optimizer, [n for n, _ in parameter_sizes(state.module)])
    buffer = torch.zeros(layout.total_bytes, dtype=torch.uint8)
    pack_into(buffer, layout, state)
    return buffer, layout


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_layout_needs_the_optimizer_state_of_a_first_step():
    state = make_state()
    with pytest.raises(ValueError, match="after the first step"):
        SnapshotLayout.build(state.module, state.optimizer, ["model.norm.weight"])


def test_layout_holds_each_owned_parameter_with_its_adamw_state():
    state = make_state()
    run_steps(state, 1)
    layout = SnapshotLayout.build(state.module, state.optimizer, ["model.norm.weight", "model.embed_tokens.weight"])
    assert [e.key for e in layout.entries] == [
        f"{name}[{part}]"
        for name in ("model.norm.weight", "model.embed_tokens.weight")
        for part in ("param", "exp_avg", "exp_avg_sq", "step")
    ]
    assert all(e.offset % 64 == 0 for e in layout.entries)
    assert layout.meta_offset >= layout.entries[-1].offset + layout.entries[-1].nbytes


def test_layout_survives_a_json_round_trip():
    state = make_state()
    run_steps(state, 1)
    _, layout = _packed(state)
    assert SnapshotLayout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout


def test_a_snapshot_of_ddp_shares_refuses_another_world_size_before_changing_anything():
    state = make_state(world_size=2)
    run_steps(state, 1)
    owned = [n for n, _ in parameter_sizes(state.module)][:3]
    layout = SnapshotLayout.build(state.module, state.optimizer, owned, world_size=2)
    buffer = torch.zeros(layout.total_bytes, dtype=torch.uint8)
    pack_into(buffer, layout, state)
    layout.check_world(2, sharded=False)  # the world it was taken in: fits
    other = make_state(seed=1, world_size=3)
    before = [p.detach().clone() for p in other.module.parameters()]
    with pytest.raises(RecoveryError, match="snapshot was taken by 2 ranks, this worker group has 3"):
        unpack_from(buffer, layout, other)
    assert all(torch.equal(a, b) for a, b in zip(before, other.module.parameters(), strict=True))
    assert other.step == 0


def test_unpack_restores_parameters_optimizer_scheduler_and_rng_bit_identically():
    source = make_state(seed=0)
    run_steps(source, 2)
    rng = (random.getstate(), np.random.get_state(legacy=False)["state"]["key"].copy(), torch.get_rng_state())
    buffer, layout = _packed(source)

    target = make_state(seed=1)  # other weights, an optimizer without state, the schedule at 0
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    assert unpack_from(memoryview(bytes(buffer.numpy())), layout, target) == 2  # read-only, like a keeper's bytes

    assert target.step == 2
    for (name, p), (_, q) in zip(source.module.named_parameters(), target.module.named_parameters(), strict=True):
        assert torch.equal(p, q), name
        for part, t in source.optimizer.state[p].items():
            assert torch.equal(t, target.optimizer.state[q][part]), f"{name}[{part}]"
    assert target.scheduler.state_dict() == source.scheduler.state_dict()
    assert [g["lr"] for g in target.optimizer.param_groups] == [g["lr"] for g in source.optimizer.param_groups]
    assert random.getstate() == rng[0]
    assert np.array_equal(np.random.get_state(legacy=False)["state"]["key"], rng[1])
    assert torch.equal(torch.get_rng_state(), rng[2])


def test_restored_run_repeats_the_next_three_losses_bitwise():
    uninterrupted = make_state(seed=0)
    run_steps(uninterrupted, 2)
    buffer, layout = _packed(uninterrupted)
    expected_losses, expected_draws = run_steps(uninterrupted, 3), _draws()

    restored = make_state(seed=1)
    torch.manual_seed(7)  # the dropout stream must come from the snapshot, not from here
    unpack_from(buffer, layout, restored)
    assert run_steps(restored, 3) == expected_losses
    assert _draws() == expected_draws


def test_equal_states_pack_to_equal_bytes():
    state = make_state()
    run_steps(state, 1)
    first, _ = _packed(state)
    second, _ = _packed(state)
    assert torch.equal(first, second)


def test_restoring_into_a_different_model_names_the_first_differing_tensor():
    source = make_state()
    run_steps(source, 1)
    buffer, layout = _packed(source)
    other = make_state(intermediate_size=128)
    with pytest.raises(RecoveryError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight\[param\] is float32\[256, 64\]"):
        unpack_from(buffer, layout, other)
    assert other.step == 0 and not other.optimizer.state  # refused before anything changed


def _as_older_meta(buffer: torch.Tensor, layout: SnapshotLayout) -> None:
    """Rewrite the meta in the form snapshots had before the RNG keys went as base64: lists of integers."""
    meta = read_meta(buffer, layout)
    rng = meta["rng"]
    words = base64.b64decode(rng["python"][1])
    rng["python"][1] = list(struct.unpack(f"<{len(words) // 4}I", words))
    key = np.frombuffer(base64.b64decode(rng["numpy"]["state"]["key"]), dtype="<u4")
    rng["numpy"]["state"]["key"] = key.tolist()
    write_meta(buffer, layout, json.dumps(meta).encode())


def test_a_snapshot_with_the_older_integer_list_rng_keys_restores_the_same_streams():
    source = make_state(seed=0)
    run_steps(source, 2)
    buffer, layout = _packed(source)
    expected = _draws()
    _as_older_meta(buffer, layout)

    target = make_state(seed=1)
    random.seed(7), np.random.seed(7)
    unpack_from(buffer, layout, target)
    assert _draws() == expected


def test_meta_encoder_gives_capture_meta_bytes_as_the_curve_moves_is_replaced_or_changed_in_place():
    state = make_state()
    run_steps(state, 3)
    state.lr_curve = [[s, 1e-3 * s / 7] for s, _ in state.loss_curve]
    encoder = MetaEncoder()
    assert encoder.capture(state, 2) == capture_meta(state, 2)
    run_steps(state, 1)  # a new point enters the tail, the oldest leaves it
    state.lr_curve.append([state.step, 5e-4])
    assert encoder.capture(state, 2) == capture_meta(state, 2)
    state.loss_curve = [[s, v + 1.0] for s, v in state.loss_curve]  # replaced, as a restore merges curves
    assert encoder.capture(state, 2) == capture_meta(state, 2)
    state.loss_curve[-1][1] = 0.5  # changed in place
    assert encoder.capture(state, 2) == capture_meta(state, 2)
    assert json.loads(encoder.capture(state, 2))["curve"]["loss"][-1] == [state.step, 0.5]


def test_copy_tensors_refuses_a_layout_with_another_number_of_tensors():
    with pytest.raises(ValueError, match="1 buffer views for 2 tensors"):
        copy_tensors([torch.zeros(2)], [torch.ones(2), torch.ones(2)])
