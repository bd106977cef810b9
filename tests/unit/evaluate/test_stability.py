"""Stability across checkpoints (BOSE): Kendall's tau on crafted rankings, the bad settings of
pretrain.eval_checkpoints, and one small evaluation of two kept checkpoints end to end."""

from __future__ import annotations

import json

import pytest

from components.common.errors import ConfigError
from components.evaluate.stability import kendall, markdown, summarize
from components.training.eval_checkpoints import eval_checkpoint_steps

T = "lmforge_shakespeare_order"
DIRECTIONS = {f"{T}_acc": True, f"{T}_blank_acc": True, f"{T}_blank_ppl": False, "flat_acc": True}


def crafted() -> dict[int, dict[str, float]]:
    """Four checkpoints whose perplexity falls steadily; each score ranks them in a known way."""
    ppl = [100.0, 50.0, 30.0, 20.0]
    acc = [0.2, 0.3, 0.5, 0.6]  # the same ranking as perplexity
    blank = [0.3, 0.2, 0.5, 0.6]  # one of the six pairs swapped
    blank_ppl = [9.0, 8.0, 7.0, 6.0]  # lower is better, falling: the same ranking
    return {
        s: {
            "heldout_perplexity": ppl[i],
            f"{T}_acc": acc[i],
            f"{T}_acc_stderr": 0.01,
            f"{T}_blank_acc": blank[i],
            f"{T}_blank_ppl": blank_ppl[i],
            "flat_acc": 0.25,
        }
        for i, s in enumerate((50, 100, 150, 200))
    }


def test_kendall_tau_of_crafted_rankings():
    assert kendall([1, 2, 3, 4], [10, 20, 30, 40])["tau"] == pytest.approx(1.0)
    assert kendall([1, 2, 3, 4], [40, 30, 20, 10])["tau"] == pytest.approx(-1.0)
    # one discordant pair of six: (5 - 1) / 6
    assert kendall([2, 1, 3, 4], [1, 2, 3, 4])["tau"] == pytest.approx(4 / 6)


def test_scores_are_oriented_against_perplexity_and_training_order():
    out = summarize(crafted(), DIRECTIONS, blank_tasks=[T])
    assert out["tau_vs_perplexity"][f"{T}_acc"]["tau"] == pytest.approx(1.0)
    assert out["tau_vs_perplexity"][f"{T}_blank_acc"]["tau"] == pytest.approx(4 / 6)
    # lower-is-better blank perplexity that falls with held-out perplexity agrees with it
    assert out["tau_vs_perplexity"][f"{T}_blank_ppl"]["tau"] == pytest.approx(1.0)
    assert out["tau_vs_step"]["heldout_perplexity"]["tau"] == pytest.approx(1.0)
    assert out["tau_methods"][T]["tau"] == pytest.approx(4 / 6)


def test_a_filtered_metrics_standard_error_is_not_ranked_as_a_score():
    # lm-eval's "exact_match_stderr,first-integer", flattened, comes with a direction like its metric
    arith = "lmforge_arithmetic_exact_match"
    by_step = crafted()
    for i, s in enumerate(sorted(by_step)):
        by_step[s] |= {f"{arith}_first-integer": 0.1 * i, f"{arith}_stderr_first-integer": 0.05}
    directions = DIRECTIONS | {f"{arith}_first-integer": True, f"{arith}_stderr_first-integer": True}
    out = summarize(by_step, directions)
    assert f"{arith}_first-integer" in out["scores"] and f"{arith}_stderr_first-integer" not in out["scores"]
    assert f"| {arith}_first-integer |" in markdown(out)


def test_a_constant_score_has_an_undefined_tau_not_zero():
    out = summarize(crafted(), DIRECTIONS)
    assert out["tau_vs_perplexity"]["flat_acc"]["tau"] is None


@pytest.mark.parametrize("k", [1, 6])
def test_eval_checkpoints_outside_2_to_steps_fail_naming_the_key(make_config, k):
    with pytest.raises(ConfigError, match=rf"pretrain\.eval_checkpoints: .*pretrain\.steps=5.*got {k}"):
        make_config("pretrain.steps=5", "pretrain.warmup_steps=1", f"pretrain.eval_checkpoints={k}")


def test_eval_checkpoint_steps_are_evenly_spaced_and_end_at_the_last_step():
    assert eval_checkpoint_steps(300, 4) == (75, 150, 225, 300)
    assert eval_checkpoint_steps(300, 0) == ()


def test_kept_checkpoints_are_each_evaluated_and_ranked(
    make_config, tiny_model, trained_tiny_model, tiny_dataset, tmp_path
):
    from components.evaluate.run import evaluate

    cfg = make_config(
        "evaluate.gate.guards=",  # no upstream stages here, so none of the metrics the profile's guards bound
        "evaluate.limit=20",
        f"evaluate.tasks=[{T}]",
        f"evaluate.blank_tasks=[{T}]",
        "model.seq_len=64",
        "evaluate.heldout_max_tokens=2000",
    )
    out = evaluate(
        cfg,
        model_dir=trained_tiny_model,
        datasets={"shakespeare": tiny_dataset},
        out_dir=tmp_path / "out",
        checkpoints={100: tiny_model, 200: trained_tiny_model},  # untrained, then trained
    )
    stable = out["stability"]
    assert stable["steps"] == [100, 200]
    assert [r["step"] for r in stable["rows"]] == [100, 200]
    # training lowers held-out perplexity and the gold texts' blank perplexity: both rank step 200 first
    assert stable["tau_vs_step"]["heldout_perplexity"]["tau"] == pytest.approx(1.0)
    assert stable["tau_vs_perplexity"][f"{T}_blank_ppl"]["tau"] == pytest.approx(1.0)
    assert out["metrics"][f"stability_tau_ppl_{T}_blank_ppl"] == pytest.approx(1.0)
    assert T in stable["tau_methods"]
    written = tmp_path / "out"
    assert json.loads((written / "stability.json").read_text())["steps"] == [100, 200]
    assert (written / "stability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| lmforge_shakespeare_order_blank_acc |" in (written / "stability.md").read_text()
