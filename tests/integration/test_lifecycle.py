"""The whole lifecycle on the tiny profile through kfp.local, asserting real outcomes.

One pipeline run (the session fixture ``lifecycle_run`` in conftest.py, a few minutes on 2 cores)
feeds every test here; each test checks one promise: the loss fell, the manifest is true to the shards, the final model loads and
generates, MLflow holds the parent and nested runs with their inputs, the registry has a champion.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _summary(home: Path, stage: str) -> dict:
    import mlflow

    [run] = mlflow.search_runs(filter_string=f"tags.`lmforge.stage` = '{stage}'", output_format="list")
    uri = run.data.tags["lmforge.output_uri"]
    return json.loads(Path(uri.removeprefix("file://"), "_COMPLETE.json").read_text())


def test_pretraining_loss_fell(lifecycle_run):
    m = _summary(lifecycle_run["home"], "pretrain")["metrics"]
    assert m["final_loss"] < m["initial_loss"] - 1.0


def test_manifest_token_counts_match_the_shard_files(lifecycle_run):
    home = lifecycle_run["home"]
    for dataset in (home / "store" / "datasets").glob("*/manifest.json"):
        manifest = json.loads(dataset.read_text())
        itemsize = np.dtype(manifest["dtype"]).itemsize
        for split in manifest["splits"].values():
            on_disk = sum((dataset.parent / s["path"]).stat().st_size // itemsize for s in split["shards"])
            assert on_disk == split["tokens"] > 0


def test_final_model_loads_and_generates(lifecycle_run):
    import torch

    from components.common.model_loading import load_model
    from components.common.tokenizer import load_tokenizer

    path = Path(lifecycle_run["record"]["model_uri"].removeprefix("file://"))
    model, tok = load_model(path), load_tokenizer(path)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert isinstance(tok.decode(out[0, ids.shape[1] :]), str)


def test_mlflow_holds_parent_and_stage_runs_with_inputs(lifecycle_run):
    import mlflow

    home = lifecycle_run["home"]
    parent_id = lifecycle_run["record"]["parent_run_id"]
    parent = mlflow.MlflowClient().get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["lmforge.profile"] == "tiny" and parent.data.tags["lmforge.kfp_run_id"]
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", output_format="list")
    stages = sorted(r.data.tags["lmforge.stage"] for r in children)
    assert stages == sorted(
        ["curate", "curate", "pretrain", "continual", "align", "prefer", "quantize", "evaluate", "register"]
    )
    pretrain = next(r for r in children if r.data.tags["lmforge.stage"] == "pretrain")
    inputs = pretrain.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["datasets/dataset"]
    assert inputs[0].dataset.digest and str(home) in inputs[0].dataset.source
    assert mlflow.MlflowClient().get_metric_history(pretrain.info.run_id, "train_loss")


def test_registry_alias_champion_is_set(lifecycle_run):
    import mlflow

    name = lifecycle_run["cfg"].register.model_name
    client = mlflow.MlflowClient()
    first = client.get_model_version(name, "1")
    assert first.source == lifecycle_run["record"]["model_uri"]
    assert first.tags["lmforge.profile"] == "tiny" and first.tags["lmforge.register.decision"]
    assert str(client.get_model_version_by_alias(name, "champion").version) in {"1", "2"}


def test_report_opens_with_the_verdict_and_follows_the_pipeline(lifecycle_run):
    page = Path(lifecycle_run["record"]["report"]).read_text()
    assert page.count("data:image/png;base64,") >= 3
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings[0] == "Summary" and "Promotion gate: <b>PASS</b>" in page
    order = ["Pretraining", "Continual pretraining", "Alignment", "Quantization", "Evaluation", "Registration"]
    assert [h for h in headings if h in order] == order
    assert re.search(r"<td>pretraining corpus</td><td class=n>[\d.]+ ± [\d.]+</td>", page)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LIFECYCLE_STEPS = (
    "start lineage",
    "curate pretrain corpus",
    "curate continual corpus",
    "pretrain",
    "continual",
    "sft",
    "preference",
    "quantize",
    "evaluate",
    "register",
    "report",
)


def test_console_in_a_terminal_ends_with_every_step_done_on_one_screen(lifecycle_run):
    screen = ANSI.sub("", lifecycle_run["console"]).replace("\r", "")
    final = screen[screen.rindex("\n", 0, screen.rindex("start lineage")) + 1 :]  # the last frame, the summary
    for label in LIFECYCLE_STEPS:
        assert re.search(rf"✓ {label}\s+done in \d", final), label
    assert re.search(r"evaluate\s+done in [0-9.]+s\s+perplexity [0-9.]", final)
    assert len(final.strip().splitlines()) <= 40
    assert "have no effect in the current local runner" not in screen


def test_every_steps_full_log_is_filed_under_the_run(lifecycle_run):
    screen = ANSI.sub("", lifecycle_run["console"])
    log_dir = Path(re.search(r"step logs\s+(\S+)", screen).group(1))
    assert log_dir.parent == lifecycle_run["home"] / "logs"
    assert "lmforge-progress stage=pretrain step=" in (log_dir / "pretrain.log").read_text()
    assert "have no effect in the current local runner" in (log_dir / "pipeline.log").read_text()
    assert {p.stem for p in log_dir.glob("*.log")} >= {"start-lineage", "curate", "curate-2", "pretrain", "report"}
