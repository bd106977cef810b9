"""The promotion gate on crafted metrics: what passes, what fails, and what counts as noise."""

from __future__ import annotations

import pytest

from components.common.config import GateConfig
from components.common.errors import ConfigError
from components.evaluate.gate import Scores, Verdict, decide, lower_is_better, verdict_markdown


def champion(**metrics: float) -> Scores:
    return Scores(metrics, version="3", source="stored")


def new(**metrics: float) -> Scores:
    return Scores(metrics, directions={"arith_exact_match": True})


GUARDED = GateConfig(
    primary="heldout_perplexity",
    guards=["arith_exact_match drop<=0.02", "continual_forgetting <=0.5", "quantize_perplexity_delta_pct <=5"],
)
CHAMPION = champion(
    heldout_perplexity=40.0,
    heldout_perplexity_stderr=0.5,
    arith_exact_match=0.60,
    arith_exact_match_stderr=0.01,
    continual_forgetting=0.2,
    quantize_perplexity_delta_pct=1.0,
)


def test_clearly_better_model_with_all_guards_held_is_promoted():
    verdict = decide(
        GUARDED,
        new(
            heldout_perplexity=35.0,
            heldout_perplexity_stderr=0.5,
            arith_exact_match=0.61,
            arith_exact_match_stderr=0.01,
            continual_forgetting=0.3,
            quantize_perplexity_delta_pct=2.0,
        ),
        CHAMPION,
    )
    assert verdict.promote
    assert [r.passed for r in verdict.rules] == [True, True, True, True]
    assert verdict.champion_version == "3"


def test_better_primary_but_a_dropped_task_score_fails_by_its_guard():
    verdict = decide(
        GUARDED,
        new(
            heldout_perplexity=35.0,
            heldout_perplexity_stderr=0.5,
            arith_exact_match=0.50,
            arith_exact_match_stderr=0.01,
            continual_forgetting=0.3,
            quantize_perplexity_delta_pct=2.0,
        ),
        CHAMPION,
    )
    assert not verdict.promote
    failed = [r.rule for r in verdict.rules if not r.passed]
    assert failed == ["arith_exact_match drop<= 0.02"]
    assert "champion v3 stays" in verdict.reason


def test_absolute_bound_on_forgetting_fails_even_without_a_champion():
    verdict = decide(
        GUARDED,
        new(
            heldout_perplexity=35.0, arith_exact_match=0.6, continual_forgetting=0.9, quantize_perplexity_delta_pct=2.0
        ),
        None,
    )
    assert not verdict.promote
    assert [r.metric for r in verdict.rules if not r.passed] == ["continual_forgetting"]


def test_improvement_within_the_noise_margin_is_a_tie_that_keeps_the_incumbent():
    # 1.96 * sqrt(0.5^2 + 0.5^2) = 1.386 > 40 - 39 = 1
    verdict = decide(GateConfig(), new(heldout_perplexity=39.0, heldout_perplexity_stderr=0.5), CHAMPION)
    assert not verdict.promote
    assert verdict.rules[0].margin == pytest.approx(1.96 * 0.5 * 2**0.5)
    assert "within noise" in verdict.rules[0].note


def test_same_improvement_counts_when_the_noise_is_smaller():
    tight = champion(heldout_perplexity=40.0, heldout_perplexity_stderr=0.1)
    assert decide(GateConfig(), new(heldout_perplexity=39.0, heldout_perplexity_stderr=0.1), tight).promote


def test_noise_alone_never_fails_a_drop_guard():
    gate = GateConfig(primary="heldout_perplexity", guards=["arith_exact_match drop<=0"])
    verdict = decide(
        gate,
        new(heldout_perplexity=30.0, arith_exact_match=0.59, arith_exact_match_stderr=0.01),
        champion(heldout_perplexity=40.0, arith_exact_match=0.60, arith_exact_match_stderr=0.01),
    )
    assert verdict.promote  # 0.01 worse, inside 1.96 * sqrt(2) * 0.01


def test_higher_is_better_primary_uses_the_metrics_direction():
    gate = GateConfig(primary="arith_exact_match", z=0.0)
    assert decide(gate, new(arith_exact_match=0.7), champion(arith_exact_match=0.6)).promote
    assert not decide(gate, new(arith_exact_match=0.5), champion(arith_exact_match=0.6)).promote


def test_first_model_is_promoted_with_nothing_to_compare():
    verdict = decide(GateConfig(), new(heldout_perplexity=50.0), None)
    assert verdict.promote and verdict.reason == "no champion yet: promoted"


def test_rule_on_a_metric_not_produced_names_the_key_and_the_choices():
    gate = GateConfig(primary="heldout_perplexity", guards=["bleu drop<=0.1"])
    with pytest.raises(ConfigError, match=r"evaluate\.gate\.guards: metric 'bleu'.*heldout_perplexity"):
        decide(gate, new(heldout_perplexity=50.0), None)


def test_verdict_round_trips_and_renders_every_rule_with_both_values():
    verdict = decide(
        GUARDED,
        new(
            heldout_perplexity=35.0, arith_exact_match=0.5, continual_forgetting=0.3, quantize_perplexity_delta_pct=2.0
        ),
        CHAMPION,
    )
    again = Verdict.from_dict(verdict.to_dict())
    table = verdict_markdown(again)
    assert table.startswith("## Promotion gate: KEEP CHAMPION")
    assert "| `arith_exact_match drop<= 0.02` | 0.5 | 0.6 |" in table
    assert table.count("| pass |") == 3 and table.count("**fail**") == 1


def test_directions_by_name():
    assert lower_is_better("perplexity_pretrain_corpus") and lower_is_better("continual_forgetting")
    assert not lower_is_better("lmforge_arithmetic_exact_match")
    assert lower_is_better("acc", {"acc": False})


def test_filtered_lm_eval_metric_finds_its_stderr_under_lm_evals_name():
    scores = Scores({"t_exact_match_first-integer": 0.5, "t_exact_match_stderr_first-integer": 0.04})
    assert scores.stderr("t_exact_match_first-integer") == 0.04
