"""Fixtures of the align tests: preference pairs with a planted, learnable preference."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

WORDS = ["apple", "bird", "cat", "dog", "egg", "fish", "goat", "hat", "ink", "jam"]


def planted_pairs(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct ``{prompt, chosen, rejected}`` records where the chosen response lists the prompt's
    three words in alphabetical order and the rejected one in reverse order.

    Both responses hold the same tokens, so a model that knows nothing prefers neither (held-out
    accuracy about 0.5); a model that learned "ascending is better" prefers every chosen one, also on
    word triples it never saw (the held-out split is by content)."""
    rng = random.Random(seed)
    seen, records = set(), []
    while len(records) < n:
        words = tuple(sorted(rng.sample(WORDS, 3)))
        if words in seen:
            continue
        seen.add(words)
        shown = list(words)
        rng.shuffle(shown)
        records.append(
            {"prompt": f"Sort: {' '.join(shown)}", "chosen": " ".join(words), "rejected": " ".join(reversed(words))}
        )
    return records


@pytest.fixture(scope="session")
def planted_preferences(tmp_path_factory) -> Path:
    """A JSONL file of all 120 planted pairs (every 3-word subset of :data:`WORDS`)."""
    path = tmp_path_factory.mktemp("preferences") / "planted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in planted_pairs(120)), encoding="utf-8")
    return path


ARITHMETIC = [
    "align.task_digits=[1, 1]",
    "align.pref_lr=3e-3",
    "align.max_len=32",
]


@pytest.fixture(scope="session")
def arithmetic_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model after a 40-step SFT on 16 solved one-digit problems (a seed apart from the
    training prompts): it has the answer format and gets a few answers right when sampling, which
    expert iteration and online DPO need to find any verified-correct sample at all."""
    import torch
    from transformers import AutoModelForCausalLM

    from components.align.chat import install_chat_template
    from components.align.data import SftPair
    from components.align.trainer import build_trainer
    from components.common.arithmetic import generate
    from components.common.config import load_config
    from components.common.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("arithmetic_model")
    cfg = load_config(
        "tiny", [f"run.home={root / 'home'}", "align.steps=40", "align.warmup_steps=4", "align.lr=3e-3", *ARITHMETIC]
    )
    tok = load_tokenizer(tiny_model)
    install_chat_template(tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    solved = generate(16, split="train", seed=99, digits=(1, 1))
    warm = [SftPair(p.prompt, p.answer, "warm", i) for i, p in enumerate(solved)]
    trainer, _ = build_trainer(cfg, model, tok, warm, warm[:1], root / "work")
    trainer.train()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model"
