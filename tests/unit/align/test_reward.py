"""The Bradley-Terry reward model learns a planted preference and ranks held-out pairs by it."""

from __future__ import annotations

import pytest

from components.align.chat import install_chat_template
from components.align.judge import RewardModelJudge
from components.align.online import make_pairs
from components.align.reward import load_reward_model, train_reward_model
from components.common.config import load_config
from components.common.preferences import read_preferences, split_preferences
from components.common.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def rm_run(tiny_model, planted_preferences, tmp_path_factory):
    import torch

    cfg = load_config(
        "tiny",
        [
            f"run.home={tmp_path_factory.mktemp('rm')}",
            f"align.preferences={planted_preferences}",
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
    model = load_reward_model(tiny_model, tok)
    return model, tok, heldout, train_reward_model(cfg, model, tok, train, heldout)


def test_reward_model_learns_planted_preference_on_heldout_pairs(rm_run):
    m = rm_run[3]["metrics"]
    assert m["rm_heldout_accuracy_after"] >= 0.9
    assert m["rm_heldout_margin_after"] > 0


def test_reward_model_judge_ranks_heldout_chosen_above_rejected_like_the_trainer(rm_run):
    """As online DPO's judge, the trained reward model's score (``components.align.reward.score``) picks the
    planted-preferred reply as the best of a prompt's samples (given here worse first) and the other
    as the worst, on held-out pairs as often as trl's evaluation says it ranks them."""
    model, tok, heldout, _ = rm_run
    judge = RewardModelJudge(model, tok, heldout, heldout)
    samples = [[p.rejected, p.chosen] for p in heldout]
    pairs, _ = make_pairs(judge, heldout, samples)
    assert judge.name == "reward_model" and len(pairs) == len(heldout)
    right = sum(c == p.chosen and r == p.rejected for (_, c, r), p in zip(pairs, heldout, strict=True))
    assert right / len(heldout) >= 0.9
