"""lm-eval on an in-memory model with lmforge's shipped tasks, fully offline."""

from __future__ import annotations

import pytest

from components.common.errors import ConfigError
from components.evaluate import harness


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    from transformers import AutoModelForCausalLM

    from components.common.tokenizer import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True).eval(), load_tokenizer(tiny_model)


def test_shipped_tasks_are_exactly_lmforges():
    assert harness.shipped_tasks() == [
        "lmforge_arithmetic",
        "lmforge_gsm8k_mini",
        "lmforge_shakespeare_cloze",
        "lmforge_shakespeare_order",
    ]


def test_cloze_task_runs_offline_and_reports_accuracy(model_and_tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    metrics, table = harness.run_tasks(*model_and_tokenizer, ["lmforge_shakespeare_cloze"], limit=8, batch_size=8)
    for name in ("acc", "acc_norm"):
        assert 0.0 <= metrics[f"lmforge_shakespeare_cloze/{name}"] <= 1.0
    assert table["lmforge_shakespeare_cloze"]["samples"] == 8
    assert table["lmforge_shakespeare_cloze"]["chat_template"] is False


def test_generative_task_uses_the_chat_template_when_the_tokenizer_has_one(model_and_tokenizer):
    from components.align.chat import install_chat_template

    model, tokenizer = model_and_tokenizer
    chat_tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path, local_files_only=True)
    install_chat_template(chat_tokenizer)
    metrics, table = harness.run_tasks(model, chat_tokenizer, ["lmforge_gsm8k_mini"], limit=1, batch_size=1)
    assert table["lmforge_gsm8k_mini"]["chat_template"] is True
    assert 0.0 <= metrics["lmforge_gsm8k_mini/exact_match_strict-match"] <= 1.0
    assert 0.0 <= metrics["lmforge_gsm8k_mini/exact_match_flexible-extract"] <= 1.0


def test_unknown_task_names_the_key_and_the_shipped_tasks():
    with pytest.raises(ConfigError, match=r"evaluate\.tasks.*'hellaswag'.*lmforge_shakespeare_cloze"):
        harness.check_tasks(["lmforge_shakespeare_cloze", "hellaswag"])


def test_flattened_results_keep_filter_names_and_drop_non_numbers():
    results = {
        "alias": "t",
        "sample_len": 8,
        "acc,none": 0.5,
        "acc_stderr,none": "N/A",
        "exact_match,strict-match": 0.0,
    }
    assert harness.flatten_task_results("t", results) == {"t/acc": 0.5, "t/exact_match_strict-match": 0.0}


def test_arithmetic_task_scores_exact_match_with_its_standard_error(model_and_tokenizer):
    metrics, table = harness.run_tasks(*model_and_tokenizer, ["lmforge_arithmetic"], limit=4, batch_size=4)
    assert metrics["lmforge_arithmetic/exact_match_first-integer"] == 0.0  # a random model does no sums
    assert "lmforge_arithmetic/exact_match_stderr_first-integer" in metrics
    assert table["lmforge_arithmetic"]["samples"] == 4
