"""The evaluate stage end to end on the tiny model and dataset."""

from __future__ import annotations

import json
import shutil

import pytest

from components.common.errors import ConfigError, DataError
from components.evaluate.run import evaluate, metric_name


def test_evaluate_writes_results_and_table(make_config, tiny_model, tiny_dataset, tmp_path):
    cfg = make_config("evaluate.limit=4", "model.seq_len=64", "evaluate.heldout_max_tokens=2000")
    out = evaluate(
        cfg,
        model_dir=tiny_model,
        datasets={"shakespeare": tiny_dataset, "copy": tiny_dataset},
        out_dir=tmp_path / "out",
    )

    metrics = out["metrics"]
    assert metrics["heldout_perplexity"] == metrics["perplexity_shakespeare"] == metrics["perplexity_copy"]
    # a random model over 512 tokens is near-uniform: perplexity of the order of the vocabulary size
    assert 100 < metrics["heldout_perplexity"] < 2000
    assert 0.0 <= metrics["lmforge_shakespeare_cloze_acc"] <= 1.0
    assert all(metric_name(k) == k for k in metrics)

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["metrics"] == metrics
    assert results["tasks"]["lmforge_shakespeare_cloze"]["samples"] == 4
    table = (tmp_path / "out" / "eval_table.md").read_text()
    assert table.startswith("| metric | value |")
    assert "| lmforge_shakespeare_cloze_acc |" in table and "| heldout_perplexity |" in table


def test_evaluate_rejects_an_unknown_task_before_loading_the_model(make_config, tmp_path):
    cfg = make_config("evaluate.tasks=[hellaswag]")
    with pytest.raises(ConfigError, match="evaluate.tasks"):
        evaluate(cfg, model_dir=tmp_path / "nowhere", datasets={"x": tmp_path}, out_dir=tmp_path / "out")


def test_evaluate_rejects_a_dataset_tokenized_with_another_vocabulary(make_config, tiny_model, tiny_dataset, tmp_path):
    from components.common.tokenizer import train_tokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny_dataset, other)
    shutil.rmtree(other / "tokenizer")
    train_tokenizer(["a completely different corpus " * 20] * 10, vocab_size=300).save_pretrained(other / "tokenizer")
    with pytest.raises(DataError, match="vocabulary"):
        evaluate(make_config(), model_dir=tiny_model, datasets={"other": other}, out_dir=tmp_path / "out")


def test_metric_names_are_mlflow_safe():
    assert metric_name("lmforge_gsm8k_mini/exact_match_strict-match") == "lmforge_gsm8k_mini_exact_match_strict-match"
    assert metric_name("perplexity_my corpus,v2") == "perplexity_my corpus_v2"
