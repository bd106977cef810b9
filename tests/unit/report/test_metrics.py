"""Readable names for stage metric keys, as ``lmforge show`` prints them beside the keys."""

from __future__ import annotations

from components.report.metrics import stage_metric_label


def test_before_and_after_keys_read_as_words():
    assert stage_metric_label("quantize", "perplexity_after") == "perplexity after"
    assert stage_metric_label("quantize", "heldout_loss_before") == "held-out loss before"


def test_units_in_a_key_become_units_in_the_label():
    assert stage_metric_label("quantize", "peak_memory_mb_before") == "peak memory (MB) before"
    assert stage_metric_label("quantize", "perplexity_delta_pct") == "perplexity Δ (%)"


def test_a_corpus_after_the_slash_is_named_in_parentheses():
    assert stage_metric_label("continual", "forgetting/tinyshakespeare") == "forgetting (tinyshakespeare)"


def test_evaluate_task_metrics_name_the_task_and_lm_eval_metric_and_its_standard_error():
    assert stage_metric_label("evaluate", "lmforge_shakespeare_cloze_acc_norm") == (
        "shakespeare cloze: accuracy (log-likelihood per character)"
    )
    assert stage_metric_label("evaluate", "lmforge_arithmetic_exact_match_stderr_first-integer") == (
        "arithmetic: exact match (first-integer), standard error"
    )


def test_evaluate_gate_metrics_keep_the_gate_labels():
    assert stage_metric_label("evaluate", "heldout_perplexity") == "held-out perplexity (pretraining corpus)"
    assert stage_metric_label("evaluate", "quantize_perplexity_delta_pct") == "quantization: perplexity Δ %"


def test_an_unknown_key_still_gets_a_label():
    assert stage_metric_label("pretrain", "brand_new_number") == "brand new number"
