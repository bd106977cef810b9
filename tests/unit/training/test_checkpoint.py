"""Checkpoint state files: RNG states round-trip, a differently configured run is refused, and a restart
resumes from the newest checkpoint that is in the store."""

import random
from pathlib import Path

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


def _checkpoint_dir(run: Path, step: int, *, complete: bool) -> None:
    from components.training.checkpoint import COMPLETE, checkpoint_name

    (run / checkpoint_name(step) / "model").mkdir(parents=True)
    (run / checkpoint_name(step) / "model" / "config.json").write_text("{}")
    if complete:
        (run / checkpoint_name(step) / COMPLETE).write_text("{}")


def test_resume_prefers_the_newest_checkpoint_marked_complete_over_an_older_registered_one(tmp_path):
    # Ray registered step 4; step 8 was uploaded and marked, but its report died with a worker.
    from components.training.checkpoint import newest_checkpoint

    run = tmp_path / "pretrain"
    for step, complete in ((4, True), (8, True), (12, False)):
        _checkpoint_dir(run, step, complete=complete)
    step, uri = newest_checkpoint(run.as_uri(), str(run / "checkpoint-00000004"), {})
    assert (step, uri) == (8, (run / "checkpoint-00000008").as_uri())


def test_resume_takes_a_registered_checkpoint_without_a_mark(tmp_path):
    from components.training.checkpoint import newest_checkpoint

    run = tmp_path / "pretrain"
    _checkpoint_dir(run, 4, complete=False)
    assert newest_checkpoint(run.as_uri(), str(run / "checkpoint-00000004"), {})[0] == 4


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    from components.training.checkpoint import newest_checkpoint

    assert newest_checkpoint((tmp_path / "pretrain").as_uri(), None, {}) is None
