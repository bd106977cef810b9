"""Checkpoint state files: RNG states round-trip, and a differently configured run is refused."""

import random

import numpy as np
import pytest
import torch

from components.common.errors import RecoveryError
from components.training.checkpoint import STATE_FILE, capture_rng, read_train_state, restore_rng

KEY = {"stage": "pretrain", "steps": 20, "batch_size": 8, "world_size": 2}


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_restored_rng_repeats_the_same_draws(tmp_path):
    state = capture_rng()
    torch.save({"rng": [state]}, tmp_path / "rng.pt")  # must survive weights_only loading
    first = _draws()
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"][0])
    assert _draws() == first


def test_matching_resume_key_loads(tmp_path):
    torch.save({"step": 5, "resume_key": KEY}, tmp_path / STATE_FILE)
    assert read_train_state(tmp_path, resume_key=dict(KEY))["step"] == 5


def test_resuming_with_other_settings_is_refused_naming_the_key(tmp_path):
    torch.save({"step": 5, "resume_key": KEY}, tmp_path / STATE_FILE)
    with pytest.raises(RecoveryError, match=r"batch_size: checkpoint has 8, this run has 16"):
        read_train_state(tmp_path, resume_key={**KEY, "batch_size": 16})
