"""A shipped task is worth running only if it can tell a trained model from an untrained one: the
trained tiny model must beat the random-init tiny model by more than 1.96 combined standard errors
(lm-eval's own stderr of each score).

"Trained" is what each task measures: the Shakespeare order cloze, the tiny model after 200 steps on
the quick-start Shakespeare; single-digit addition, that model after SFT on the training side of the
problems (the held-out side, which the task scores, is never trained on)."""

from __future__ import annotations

import math

import pytest

from components.common.model_loading import load_model
from components.common.tokenizer import load_tokenizer
from components.evaluate.harness import run_tasks

LIMIT = 150  # examples per task: enough for stderrs of ~0.04, small enough for the test budget
# Single-digit addition is learnt abruptly: on this model 300 SFT steps still answer one constant
# (held-out exact match 0.08), 600 reach 0.32 and 1,000 reach 0.84 (train 1.0). Each step is one
# batch of eight ~12-token pairs, so 1,000 of them take about 10 s on one core.
ARITHMETIC_SFT_STEPS = 1000


def score(model_dir, task: str, metric: str, filter_name: str) -> tuple[float, float]:
    """The score and its standard error (lm-eval names a filtered one ``<metric>_stderr_<filter>``)."""
    metrics, _ = run_tasks(load_model(model_dir), load_tokenizer(model_dir), [task], limit=LIMIT, batch_size=16)
    suffix = f"_{filter_name}" if filter_name else ""
    return metrics[f"{task}/{metric}{suffix}"], metrics[f"{task}/{metric}_stderr{suffix}"]


@pytest.fixture(scope="module")
def arithmetic_sft_model(trained_tiny_model, tmp_path_factory):
    """``trained_tiny_model`` after SFT (chat template, answer-only loss) on the ~75 training problems of
    single-digit addition."""
    import torch
    from transformers import AutoModelForCausalLM

    from components.align.chat import install_chat_template
    from components.align.data import SftPair
    from components.align.trainer import build_trainer
    from components.common.arithmetic import every_problem
    from components.common.config import load_config

    root = tmp_path_factory.mktemp("arithmetic_sft")
    cfg = load_config(
        "tiny",
        [f"run.home={root / 'home'}", f"align.steps={ARITHMETIC_SFT_STEPS}", "align.lr=3e-3", "align.max_len=64"],
    )
    tok = load_tokenizer(trained_tiny_model)
    install_chat_template(tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(trained_tiny_model)
    pairs = [SftPair(p.prompt, p.answer, "generated", i) for i, p in enumerate(every_problem(split="train"))]
    trainer, _ = build_trainer(cfg, model, tok, pairs, pairs[:2], root / "work")
    trainer.train()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model"


@pytest.mark.parametrize(
    ("task", "metric", "filter_name", "trained"),
    [
        ("lmforge_shakespeare_order", "acc", "", "trained_tiny_model"),
        ("lmforge_arithmetic_1digit", "exact_match", "first-integer", "arithmetic_sft_model"),
    ],
)
def test_task_separates_a_trained_tiny_model_from_an_untrained_one(
    task, metric, filter_name, trained, tiny_model, request
):
    trained_score, se_trained = score(request.getfixturevalue(trained), task, metric, filter_name)
    untrained, se_untrained = score(tiny_model, task, metric, filter_name)
    assert trained_score - untrained > 1.96 * math.hypot(se_trained, se_untrained), (
        trained_score,
        se_trained,
        untrained,
        se_untrained,
    )
