"""Benchmark: how many SFT steps a tiny model needs before single-digit addition has signal.

``lmforge_arithmetic`` (two- and three-digit operands) scores 0 +- 0 on tiny; ``lmforge_arithmetic_1digit``
scores the ~25 held-out problems of single-digit addition, whose ~75 training problems a tiny model can
learn from. It learns them abruptly and late: the session's trained tiny model, fine-tuned (chat
template, answer-only loss, lr 3e-3) on the training side, answers one constant for hundreds of steps,
then generalises to the held-out side (measured on 2026-12-03: after 1,000 steps held-out exact match was
0.84 for two of four data orders and 0.08 / 0.16 for the other two; after 2,000 steps 0.88 for the order
that was at 0.08 after 1,000). Too slow for ``make test``
(~60 s of CPU per 1,000 steps on the shared 2 cores) and too fragile for an assertion, hence here.

Per step budget and data order it prints the held-out exact match through the lm-eval task and its
standard error, beside the untrained model's, and PASS when the difference exceeds 1.96 combined
standard errors (the separation test of the other shipped tasks, tests/unit/evaluate/test_task_separation.py).
No timed assertion.
"""

from __future__ import annotations

import math
import random

import pytest

from components.common.model_loading import load_model
from components.common.tokenizer import load_tokenizer
from components.evaluate.harness import run_tasks

TASK = "lmforge_arithmetic_1digit"
KEY = f"{TASK}/exact_match_first-integer"
# (SFT steps, data-order seed; None = the generator's order)
RUNS = [(1000, None), (1000, 0), (1000, 1), (1000, 2), (2000, None)]


def held_out_score(model_dir) -> tuple[float, float]:
    metrics, _ = run_tasks(load_model(model_dir), load_tokenizer(model_dir), [TASK], batch_size=16)
    return metrics[KEY], metrics[f"{TASK}/exact_match_stderr_first-integer"]


def sft_on_the_training_side(base, out, steps: int, order_seed: int | None):
    import torch
    from transformers import AutoModelForCausalLM

    from components.align.chat import install_chat_template
    from components.align.data import SftPair
    from components.align.trainer import build_trainer
    from components.common.arithmetic import every_problem
    from components.common.config import load_config

    cfg = load_config("tiny", [f"run.home={out / 'home'}", f"align.steps={steps}", "align.lr=3e-3", "align.max_len=64"])
    tok = load_tokenizer(base)
    install_chat_template(tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    pairs = [SftPair(p.prompt, p.answer, "generated", i) for i, p in enumerate(every_problem(split="train"))]
    if order_seed is not None:
        random.Random(order_seed).shuffle(pairs)
    trainer, _ = build_trainer(cfg, model, tok, pairs, pairs[:2], out / "work")
    trainer.train()
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    return out / "model"


@pytest.mark.parametrize(("steps", "order_seed"), RUNS)
def test_single_digit_addition_separates_after_sft(steps, order_seed, trained_tiny_model, tiny_model, tmp_path):
    trained = sft_on_the_training_side(trained_tiny_model, tmp_path, steps, order_seed)
    score, se = held_out_score(trained)
    base, se_base = held_out_score(tiny_model)
    margin = 1.96 * math.hypot(se, se_base)
    verdict = "PASS" if score - base > margin else "MISS"
    print(
        f"\n{TASK}: {steps} SFT steps, order seed {order_seed}: exact match {score:.2f} +- {se:.2f} vs untrained "
        f"{base:.2f} +- {se_base:.2f}; target: difference > {margin:.2f} (1.96 combined stderrs) {verdict}"
    )
