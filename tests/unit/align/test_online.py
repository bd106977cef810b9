"""Online DPO: pairs from judged samples, the batched log-probabilities its loss uses, and the
asynchronous generator's lag bounded by align.staleness."""

from __future__ import annotations

import pytest

from components.align.chat import install_chat_template, prompt_messages
from components.align.judge import VerifierJudge
from components.align.online import make_pairs, online_dpo, response_logps
from components.align.scoring import response_logprob
from components.common.arithmetic import Problem
from components.common.config import load_config
from components.common.tokenizer import load_tokenizer
from tests.unit.align.conftest import ARITHMETIC


def test_pairs_join_a_verified_answer_with_a_wrong_one_and_skip_unanimous_prompts():
    problems = [Problem("2 + 3", "5"), Problem("1 + 1", "2"), Problem("4 - 1", "3")]
    samples = [["5", "6", "5"], ["3", "4"], ["3", "3"]]
    pairs, scores = make_pairs(VerifierJudge(problems, []), problems, samples)
    assert pairs == [(prompt_messages("What is 2 + 3?"), "5", "6")]
    assert scores == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_batched_response_logps_match_one_at_a_time_despite_padding(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tiny_model)
    install_chat_template(tok)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prompts, responses = ["What is 1 + 1?", "What is 12 + 345?"], ["2", "a much longer answer: 357"]
    with torch.no_grad():
        batched = response_logps(model, tok, prompts, responses)
    single = [response_logprob(model, tok, prompt_messages(p), r) for p, r in zip(prompts, responses, strict=True)]
    assert batched.tolist() == pytest.approx(single, abs=1e-4)


def test_asynchronous_generation_lags_the_learner_by_at_most_staleness(arithmetic_model, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = load_config(
        "tiny",
        [
            f"run.home={tmp_path}",
            "align.method=online_dpo",
            "align.staleness=2",
            "align.pref_steps=5",
            "align.pref_batch_size=4",
            "align.samples_per_prompt=4",
            *ARITHMETIC,
        ],
    )
    model = AutoModelForCausalLM.from_pretrained(arithmetic_model)
    result = online_dpo(cfg, model, load_tokenizer(arithmetic_model), model_dir=arithmetic_model)
    # Batch 1 comes from the starting weights; after that the actor samples batch t+1 while the
    # learner trains on batch t, and is refreshed only when the lag would pass 2.
    assert [r["staleness"] for r in result["rounds"]] == [0, 1, 2, 1, 2]
    assert result["metrics"]["online_max_staleness"] == 2
    assert result["metrics"]["online_samples_per_second"] > 0
    assert result["judge"] == "verifier"


def test_reward_model_judge_trains_first_then_judges_replies_to_the_pairs_prompts(
    tiny_model, planted_preferences, tmp_path
):
    from components.align.prefer import prefer

    cfg = load_config(
        "tiny",
        [
            f"run.home={tmp_path}",
            "align.method=online_dpo",
            "align.judge=reward_model",
            f"align.preferences={planted_preferences}",
            "align.max_len=48",
            "align.pref_steps=2",
            "align.warmup_steps=0",
            "align.pref_batch_size=2",
            "align.samples_per_prompt=2",
        ],
    )
    summary = prefer(cfg, model_dir=tiny_model, out_dir=tmp_path / "out")
    m = summary["metrics"]
    assert summary["judge"] == "reward_model"
    assert m["rm_steps"] == 2 and m["online_updates"] == 2
    # The reward model's scores are real numbers, not the verifier's 0/1, and no exact match is claimed.
    assert "online_heldout_score_after" in m and "online_exact_match_after" not in m
    assert (tmp_path / "out" / "reward_model" / "config.json").exists()
