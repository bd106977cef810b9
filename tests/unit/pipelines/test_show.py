"""``lmforge show`` on a real MLflow SQLite store: a parent run as the pipeline and the report step leave it."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from pipelines.cli import main

# As components/report/run.py logs them on the parent run: ``<stage>.<metric>``.
METRICS = {
    "continual.heldout_loss_before/wikitext2": 7.14,
    "continual.heldout_loss_after/wikitext2": 3.92,
    "quantize.perplexity_before": 40.0,
    "quantize.perplexity_after": 40.1,
    "quantize.peak_memory_mb_after": 6.5,
    "evaluate.perplexity_pretrain_corpus": 39.5,
    "evaluate.lmforge_arithmetic_exact_match_first-integer": 0.3,
}


@pytest.fixture(scope="module")
def shown(tmp_path_factory):
    """What ``lmforge show`` prints for a finished lifecycle run whose report logged :data:`METRICS`."""
    import mlflow

    from components.common import lineage
    from components.common.config import load_config

    home = tmp_path_factory.mktemp("show")
    cfg = load_config("tiny", [f"run.home={home}"])
    run_id = lineage.start_pipeline_run(cfg, "lifecycle", "kfp-run-0001")
    client = mlflow.MlflowClient()
    for key, value in METRICS.items():
        client.log_metric(run_id, key, value)
    client.set_tag(run_id, "lmforge.registered", "lmforge-chat v1 (champion)")
    lineage.finish_pipeline_run(cfg, run_id)
    out = io.StringIO()  # not a terminal, as when piped
    with contextlib.redirect_stdout(out):
        assert main(["show", "--home", str(home)]) == 0
    return out.getvalue()


def _section(text: str, title: str) -> str:
    return text.split(f"\n{title}\n", 1)[1].split("\n\n", 1)[0]


def test_each_number_is_printed_under_a_readable_label_followed_by_its_mlflow_key(shown):
    quantize = _section(shown, "Quantization")
    assert re.search(r"^  perplexity after\s+40\.1\s+\[perplexity_after\]$", quantize, re.M)
    assert re.search(r"^  peak memory \(MB\) after\s+6\.5\s+\[peak_memory_mb_after\]$", quantize, re.M)


def test_a_per_corpus_number_names_its_corpus(shown):
    continual = _section(shown, "Continual pretraining")
    assert re.search(
        r"^  held-out loss before \(wikitext2\)\s+7\.14\s+\[heldout_loss_before/wikitext2\]$", continual, re.M
    )


def test_evaluation_numbers_read_as_the_report_names_them(shown):
    evaluation = _section(shown, "Evaluation")
    assert re.search(
        r"^  perplexity \(pretraining corpus\)\s+39\.5\s+\[perplexity_pretrain_corpus\]$", evaluation, re.M
    )
    assert re.search(
        r"^  arithmetic: exact match \(first-integer\)\s+0\.3\s+\[lmforge_arithmetic_exact_match_first-integer\]$",
        evaluation,
        re.M,
    )


def test_every_logged_key_can_still_be_found_in_the_output(shown):
    for key in METRICS:
        name = key.split(".", 1)[1]
        assert f"[{name}]" in shown, key


def test_stages_appear_in_pipeline_order(shown):
    titles = [shown.index(f"\n{t}\n") for t in ("Continual pretraining", "Quantization", "Evaluation")]
    assert titles == sorted(titles)


def test_output_to_a_pipe_carries_no_colour_codes(shown):
    assert "\x1b" not in shown
