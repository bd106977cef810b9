"""Expert iteration on the generated arithmetic task: exact match rises over the rounds."""

from __future__ import annotations

import pytest

from components.align.expert import expert_iteration
from components.common.config import load_config
from components.common.tokenizer import load_tokenizer
from tests.unit.align.conftest import ARITHMETIC


@pytest.fixture(scope="module")
def ei_run(arithmetic_model, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    cfg = load_config(
        "tiny",
        [
            f"run.home={tmp_path_factory.mktemp('ei')}",
            "align.method=expert_iteration",
            "align.rounds=3",
            "align.prompts_per_round=32",
            "align.samples_per_prompt=16",
            "align.pref_steps=20",
            *ARITHMETIC,
        ],
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(arithmetic_model)
    return expert_iteration(cfg, model, load_tokenizer(arithmetic_model))


def test_exact_match_rises_from_round_one_to_round_three(ei_run):
    m = ei_run["metrics"]
    assert m["ei_exact_match_round_3"] > m["ei_exact_match_round_1"]


def test_verified_set_grows_over_the_rounds(ei_run):
    kept = [r["kept"] for r in ei_run["rounds"]]
    assert 0 < kept[0] < kept[1] < kept[2]
