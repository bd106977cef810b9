"""Blank-perplexity scoring (BOSE's Blank-ppl) through lm-eval: it must tell a trained tiny model from
an untrained one, and a task without options must be refused before any model is loaded."""

from __future__ import annotations

import math

import pytest

from components.common.errors import ConfigError
from components.common.model_loading import load_model
from components.common.tokenizer import load_tokenizer
from components.evaluate.blank import blank_task, score_item
from components.evaluate.harness import evaluate_one, flatten_task_results, run_tasks, task_manager

TASK = "lmforge_shakespeare_order"
LIMIT = 150  # as test_task_separation: stderrs of ~0.04 at a few seconds per model


def blank_score(model_dir) -> dict[str, float]:
    """Only the blank-scored variant (run_tasks would add the log-likelihood pass test_task_separation times)."""
    from lm_eval.models.huggingface import HFLM

    manager = task_manager()
    lm = HFLM(pretrained=load_model(model_dir), tokenizer=load_tokenizer(model_dir), batch_size=16)
    out = evaluate_one(lm, blank_task(TASK, manager), manager, limit=LIMIT, use_chat=False, seed=0)
    return flatten_task_results(TASK, out["results"][TASK + "_blank"])


def test_blank_perplexity_separates_a_trained_tiny_model_from_an_untrained_one(trained_tiny_model, tiny_model):
    trained, untrained = blank_score(trained_tiny_model), blank_score(tiny_model)
    key = f"{TASK}/blank_acc"
    margin = 1.96 * math.hypot(trained[f"{key}_stderr"], untrained[f"{key}_stderr"])
    assert trained[key] - untrained[key] > margin, (trained, untrained)
    # and the gold texts read better to the trained model: a lower per-byte perplexity
    assert trained[f"{TASK}/blank_ppl"] < untrained[f"{TASK}/blank_ppl"]


def test_blank_score_picks_the_text_with_the_lowest_perplexity_per_byte():
    # option 1's text has the higher total log-likelihood loss but is twice as long: per byte it reads best
    texts = ["ab cd", "ab cd ef gh"]
    out = score_item([-10.0, -12.0], texts, gold=1, choices=["cd", "cd ef gh"])
    assert out["blank_acc"] == 1.0
    assert out["blank_ppl"] == pytest.approx(math.exp(12.0 / len(texts[1])))


def test_blank_scoring_of_a_generative_task_fails_naming_the_key_before_loading_the_model(make_config, tmp_path):
    from components.evaluate.run import evaluate

    cfg = make_config("evaluate.tasks=[lmforge_arithmetic]", "evaluate.blank_tasks=[lmforge_arithmetic]")
    with pytest.raises(ConfigError, match=r"evaluate\.blank_tasks: 'lmforge_arithmetic' is a generate_until task"):
        evaluate(cfg, model_dir=tmp_path / "nowhere", datasets={"x": tmp_path}, out_dir=tmp_path / "out")


def test_blank_scoring_of_an_unknown_task_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"evaluate\.blank_tasks: unknown task\(s\) 'hellaswag'"):
        run_tasks(None, None, ["lmforge_shakespeare_order"], blank_tasks=["hellaswag"])
