"""The evaluate stage end to end on the tiny model and dataset.

Most tests here evaluate a model alone, with no upstream stages: they clear the tiny profile's gate
guards (``NO_GUARDS``), which bound the quantize and continual stages' numbers and would otherwise,
rightly, fail as naming metrics this evaluation does not produce.
"""

from __future__ import annotations

import json
import shutil

import pytest

from components.common.errors import ConfigError, DataError
from components.evaluate.run import Champion, evaluate, evaluation_digest, metric_name

NO_GUARDS = "evaluate.gate.guards="


def test_evaluate_writes_results_and_table(make_config, tiny_model, tiny_dataset, tmp_path):
    cfg = make_config(
        NO_GUARDS,
        "evaluate.limit=4",
        "evaluate.tasks=[lmforge_shakespeare_cloze]",
        "model.seq_len=64",
        "evaluate.heldout_max_tokens=2000",
    )
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
        evaluate(make_config(NO_GUARDS), model_dir=tiny_model, datasets={"other": other}, out_dir=tmp_path / "out")


def test_metric_names_are_mlflow_safe():
    assert metric_name("lmforge_gsm8k_mini/exact_match_strict-match") == "lmforge_gsm8k_mini_exact_match_strict-match"
    assert metric_name("perplexity_my corpus,v2") == "perplexity_my corpus_v2"


@pytest.fixture
def gate_cfg(make_config):
    # no lm-eval task: the gate tests need the perplexity path only, and it keeps them fast
    return make_config(NO_GUARDS, "evaluate.tasks=", "model.seq_len=64", "evaluate.heldout_max_tokens=2000")


def test_champion_evaluated_with_another_digest_is_re_evaluated_in_the_same_run(
    gate_cfg, tiny_model, tiny_dataset, tmp_path
):
    fetched = []
    stale = Champion(
        "1", {"heldout_perplexity": 1.0e6}, "sha256:an-older-evaluation", lambda: fetched.append(1) or tiny_model
    )
    out = evaluate(gate_cfg, model_dir=tiny_model, datasets={"corpus": tiny_dataset}, out_dir=tmp_path, champion=stale)
    assert fetched == [1]
    verdict = out["verdict"]
    assert verdict["champion_source"] == "re-evaluated"
    # the same model on both sides: its stale 1e6 is not used, the re-measured tie keeps the incumbent
    assert verdict["rules"][0]["champion"] == pytest.approx(out["metrics"]["heldout_perplexity"])
    assert not verdict["promote"]


def test_champion_evaluated_with_the_same_digest_is_judged_on_its_stored_numbers(
    gate_cfg, tiny_model, tiny_dataset, tmp_path
):
    def must_not_fetch():
        raise AssertionError("the champion's model was fetched although its numbers are comparable")

    digest = evaluation_digest(gate_cfg, {"corpus": tiny_dataset})
    stored = Champion("4", {"heldout_perplexity": 1.0e6, "heldout_perplexity_stderr": 1.0}, digest, must_not_fetch)
    out = evaluate(gate_cfg, model_dir=tiny_model, datasets={"corpus": tiny_dataset}, out_dir=tmp_path, champion=stored)
    assert out["verdict"]["champion_source"] == "stored" and out["verdict"]["promote"]
    assert out["metrics"]["gate_promote"] == 1
    assert json.loads((tmp_path / "verdict.json").read_text())["champion_version"] == "4"
    assert (tmp_path / "verdict.md").read_text().startswith("## Promotion gate: PROMOTE")


def test_evaluation_digest_ignores_the_gate_rules_but_not_the_data_limit(make_config, tiny_dataset):
    base = evaluation_digest(make_config(), {"c": tiny_dataset})
    assert evaluation_digest(make_config("evaluate.gate.z=3"), {"c": tiny_dataset}) == base
    assert evaluation_digest(make_config("evaluate.heldout_max_tokens=999"), {"c": tiny_dataset}) != base


def test_gate_rule_on_a_metric_never_produced_fails_before_loading_the_model(make_config, tmp_path):
    cfg = make_config("evaluate.gate.guards=[quantize_bleu <=3]")
    with pytest.raises(ConfigError, match=r"evaluate\.gate\.guards: metric 'quantize_bleu'.*quantize_size_ratio"):
        evaluate(
            cfg,
            model_dir=tmp_path / "nowhere",
            datasets={"x": tmp_path},
            out_dir=tmp_path / "out",
            upstream={"quantize_size_ratio": 0.4},
        )


def test_perplexity_comes_with_its_standard_error(gate_cfg, tiny_model, tiny_dataset, tmp_path):
    metrics = evaluate(gate_cfg, model_dir=tiny_model, datasets={"corpus": tiny_dataset}, out_dir=tmp_path)["metrics"]
    assert 0 < metrics["heldout_perplexity_stderr"] < metrics["heldout_perplexity"]
    assert metrics["perplexity_corpus_stderr"] == metrics["heldout_perplexity_stderr"]


def test_unreadable_preference_source_fails_naming_it_before_loading_the_model(make_config, tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"chosen": "only one side"}\n')
    cfg = make_config(NO_GUARDS, f"evaluate.preference_source={bad}", "evaluate.tasks=")
    with pytest.raises(DataError, match=r"pairs\.jsonl: no usable preference pair"):
        evaluate(cfg, model_dir=tmp_path / "nowhere", datasets={"x": tmp_path}, out_dir=tmp_path / "out")


def test_task_definitions_are_logged_as_mlflow_inputs_with_digests(make_config, tmp_path):
    import mlflow

    from components.common import lineage
    from components.evaluate.run import log_evaluation_inputs, task_files_digest

    # blank_tasks=[]: a blank-scored task is logged too (the tiny profile blank-scores the cloze)
    cfg = make_config("evaluate.tasks=[lmforge_shakespeare_order, lmforge_arithmetic]", "evaluate.blank_tasks=[]")
    with lineage.stage_run(cfg, "evaluate") as run_id:
        log_evaluation_inputs(cfg, None)
    inputs = {i.dataset.name: i.dataset.digest for i in mlflow.get_run(run_id).inputs.dataset_inputs}
    assert inputs == {
        f"eval_tasks/{t}": task_files_digest(t)[0][:36] for t in ("lmforge_shakespeare_order", "lmforge_arithmetic")
    }
    assert task_files_digest("lmforge_arithmetic") != task_files_digest("lmforge_shakespeare_order")


def test_standard_task_lineage_digest_names_the_lm_eval_folder_that_defines_it():
    from components.evaluate.run import task_files_digest

    digest, source = task_files_digest("arc_easy")
    assert digest.startswith("sha256:") and source.endswith("lm_eval/tasks/arc")
