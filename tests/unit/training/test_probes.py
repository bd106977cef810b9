"""Held-out probes run where the weights are (one process here; each rank a share of the windows on Ray)."""

from __future__ import annotations

import pytest
import torch

from components.training.heldout import heldout_loss
from components.training.probes import HeldoutProbes
from components.training.spec import Probe


class _State:
    """The two fields a probe reads from a TrainState."""

    def __init__(self, module, step: int) -> None:
        self.module, self.step, self.rank, self.world_size = module, step, 0, 1


@pytest.fixture(scope="module")
def model(tiny_model):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_model)


def _probes(dataset, **kw) -> HeldoutProbes:
    probe = Probe("heldout", dataset.as_uri(), max_tokens=2000, batch_size=4, **kw)
    return HeldoutProbes((probe,), total_steps=6, seq_len=64, store_options={})


def test_probe_equals_the_single_process_heldout_loss(model, tiny_dataset):
    probes = _probes(tiny_dataset, at_start=True)
    probes.pre_train(_State(model, 0))
    expected = heldout_loss(model, tiny_dataset.as_uri(), seq_len=64, max_tokens=2000, batch_size=4)
    assert probes.curves["heldout"] == [[0, pytest.approx(expected, rel=1e-6)]]


def test_probe_records_start_every_n_steps_and_last_step(model, tiny_dataset):
    probes = _probes(tiny_dataset, at_start=True, every=4)
    probes.pre_train(_State(model, 0))
    for step in range(1, 7):
        probes.post_step(_State(model, step))
    assert [s for s, _ in probes.curves["heldout"]] == [0, 4, 6]


def test_a_resumed_run_replaces_points_it_measures_again(model, tiny_dataset):
    probes = _probes(tiny_dataset, every=2)
    probes.load_state_dict({"curves": {"heldout": [[2, 9.0], [4, 9.0]]}})  # saved before a failure
    probes.post_step(_State(model, 2))  # resumed from step 1: step 2 is measured again
    assert [s for s, _ in probes.curves["heldout"]] == [2]
    assert probes.curves["heldout"][0][1] != 9.0


def test_probing_draws_no_random_numbers(model, tiny_dataset):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    _probes(tiny_dataset, at_start=True).pre_train(_State(model, 0))
    assert torch.equal(torch.rand(3), expected)
