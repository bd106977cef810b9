"""Expert iteration on the generated arithmetic task: exact match rises over the rounds."""

from __future__ import annotations

import pytest

from components.align.chat import install_chat_template
from components.align.data import SftPair
from components.align.expert import expert_iteration
from components.align.trainer import build_trainer
from components.common.arithmetic import generate
from components.common.config import load_config
from components.common.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def ei_run(tiny_model, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    home = tmp_path_factory.mktemp("ei")
    cfg = load_config(
        "tiny",
        [
            f"run.home={home}",
            "align.method=expert_iteration",
            "align.task_digits=[1, 1]",
            "align.rounds=3",
            "align.prompts_per_round=24",
            "align.samples_per_prompt=8",
            "align.pref_steps=20",
            "align.pref_lr=3e-3",
            "align.steps=40",
            "align.warmup_steps=4",
            "align.lr=3e-3",
            "align.max_len=32",
        ],
    )
    tok = load_tokenizer(tiny_model)
    install_chat_template(tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    # A short SFT on a few solved problems teaches the answer format, so sampling finds some right answers.
    warm = [
        SftPair(p.prompt, p.answer, "warm", i)
        for i, p in enumerate(generate(16, split="train", seed=99, digits=(1, 1)))
    ]
    trainer, _ = build_trainer(cfg, model, tok, warm, warm[:1], home / "warm")
    trainer.train()
    return expert_iteration(cfg, model, tok)


def test_exact_match_rises_from_round_one_to_round_three(ei_run):
    m = ei_run["metrics"]
    assert m["ei_exact_match_round_3"] > m["ei_exact_match_round_1"]
