"""DPO on the tiny model: a planted preference is learned and generalizes to held-out pairs."""

from __future__ import annotations

import pytest

from components.align.chat import install_chat_template
from components.align.dpo import train_dpo
from components.common.preferences import read_preferences, split_preferences
from components.common.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def dpo_run(tiny_model, planted_preferences, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    from components.common.config import load_config

    home = tmp_path_factory.mktemp("dpo")
    cfg = load_config(
        "tiny",
        [
            f"run.home={home}",
            f"align.preferences={planted_preferences}",
            "align.method=dpo",
            "align.max_len=48",
            "align.pref_heldout_fraction=0.25",
            "align.pref_steps=30",
        ],
    )
    pairs, _ = read_preferences(str(planted_preferences))
    train, heldout = split_preferences(pairs, cfg.align.pref_heldout_fraction)
    tok = load_tokenizer(tiny_model)
    install_chat_template(tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model)
    return train_dpo(cfg, model, ref, tok, train, heldout)


def test_dpo_raises_heldout_preference_accuracy_from_chance(dpo_run):
    m = dpo_run["metrics"]
    assert 0.3 <= m["dpo_heldout_accuracy_before"] <= 0.7
    assert m["dpo_heldout_accuracy_after"] >= 0.8
