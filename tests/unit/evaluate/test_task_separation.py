"""A shipped task is worth running only if it can tell a trained model from an untrained one: the
trained tiny model (200 steps on the quick-start Shakespeare) must beat the random-init tiny model
by more than 1.96 combined standard errors (lm-eval's own stderr of each score)."""

from __future__ import annotations

import math

import pytest

from components.common.model_loading import load_model
from components.common.tokenizer import load_tokenizer
from components.evaluate.harness import run_tasks

LIMIT = 150  # examples per task: enough for stderrs of ~0.04, small enough for the test budget


def score(model_dir, task: str) -> tuple[float, float]:
    metrics, _ = run_tasks(load_model(model_dir), load_tokenizer(model_dir), [task], limit=LIMIT, batch_size=16)
    return metrics[f"{task}/acc"], metrics[f"{task}/acc_stderr"]


@pytest.mark.parametrize("task", ["lmforge_shakespeare_order"])
def test_task_separates_a_trained_tiny_model_from_an_untrained_one(task, trained_tiny_model, tiny_model):
    trained, se_trained = score(trained_tiny_model, task)
    untrained, se_untrained = score(tiny_model, task)
    assert trained - untrained > 1.96 * math.hypot(se_trained, se_untrained), (trained, untrained)
