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


def test_single_digit_addition_separates_after_the_align_arithmetic_phase(
    trained_tiny_model, tiny_model, make_config, tmp_path
):
    """The SFT arithmetic phase (300 steps, its other knobs at their defaults) on the trained tiny
    model: lmforge_arithmetic_1digit, all 25 held-out problems."""
    import torch
    from transformers import AutoModelForCausalLM

    from components.align.chat import install_chat_template
    from components.align.sft import arithmetic_phase

    cfg = make_config("align.arithmetic_steps=300")
    tok = load_tokenizer(trained_tiny_model)
    install_chat_template(tok)
    torch.manual_seed(cfg.run.seed)
    model = AutoModelForCausalLM.from_pretrained(trained_tiny_model)
    arithmetic_phase(cfg, model, tok, None, tmp_path / "work")
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")

    task = "lmforge_arithmetic_1digit"
    scores = {}
    for name, model_dir in (("trained", tmp_path / "model"), ("untrained", tiny_model)):
        metrics, _ = run_tasks(load_model(model_dir), load_tokenizer(model_dir), [task], batch_size=16)
        scores[name] = metrics[f"{task}/exact_match_first-integer"], metrics[f"{task}/exact_match_stderr_first-integer"]
    (trained, se_trained), (untrained, se_untrained) = scores["trained"], scores["untrained"]
    assert trained - untrained > 1.96 * math.hypot(se_trained, se_untrained), scores
