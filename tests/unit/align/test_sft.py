"""The whole SFT stage on the tiny model: it learns, saves a chat model, quarantines and logs."""

from __future__ import annotations

import json

import pytest

from components.align.sft import align
from components.common.config import load_config
from components.common.sources import QUICKSTART_DIR as QUICKSTART

METRICS = {
    "sft_examples",
    "quarantined",
    "sft_loss_first",
    "sft_loss_last",
    "sft_heldout_answer_loss_before",
    "sft_heldout_answer_loss_after",
    "steps",
}


@pytest.fixture(scope="module")
def sft_source(tmp_path_factory):
    """120 GSM8K pairs with two malformed lines at lines 3 and 50."""
    root = tmp_path_factory.mktemp("sft_source")
    lines = (QUICKSTART / "gsm8k_train.jsonl").read_text(encoding="utf-8").splitlines()[:120]
    lines.insert(2, '{"question": "truncated record"')
    lines.insert(49, json.dumps({"prompt": "wrong field names", "completion": "x"}))
    source = root / "sft.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return source


def sft_config(root, source, *extra: str):
    return load_config(
        "tiny",
        [
            f"run.home={root / 'home'}",
            f"align.source={source}",
            "align.max_examples=0",
            "align.steps=25",
            "align.warmup_steps=3",
            "align.batch_size=8",
            "align.max_len=96",
            "align.lr=3e-3",
            "align.arithmetic_steps=0",  # the tiny profile's arithmetic phase has a test of its own
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model, sft_source):
    """One 25-step SFT run in this process on :func:`sft_source`."""
    import mlflow

    from components.common import lineage

    root = tmp_path_factory.mktemp("sft")
    cfg = sft_config(root, sft_source)
    lineage.setup(cfg)
    with mlflow.start_run() as run:
        run_id = run.info.run_id
    out = root / "out"
    return cfg, out, align(cfg, model_dir=tiny_model, out_dir=out, mlflow_run_id=run_id), run_id


def test_sft_lowers_heldout_answer_loss(sft_run):
    metrics = sft_run[2]["metrics"]
    assert metrics["sft_heldout_answer_loss_after"] < metrics["sft_heldout_answer_loss_before"] - 0.5
    assert metrics["sft_loss_last"] < metrics["sft_loss_first"]


def test_sft_reports_the_documented_metrics(sft_run):
    metrics = sft_run[2]["metrics"]
    assert metrics.keys() >= METRICS
    assert metrics["steps"] == 25
    assert metrics["sft_examples"] + metrics["sft_heldout_examples"] == 120
    assert metrics["sft_heldout_examples"] == 6


def test_sft_quarantines_malformed_lines_with_file_and_line(sft_run):
    cfg, out, result, _ = sft_run
    assert result["metrics"]["quarantined"] == 2
    rows = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rows] == [(3, "invalid_json"), (50, "missing_field:question")]
    assert all(r["file"].endswith("sft.jsonl") for r in rows)


def test_saved_model_generates_through_its_saved_chat_template(sft_run):
    import torch
    from transformers import AutoModelForCausalLM

    from components.common.tokenizer import load_tokenizer

    model_dir = sft_run[1] / "model"
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is 3 + 4?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert tok.convert_tokens_to_ids("<|end|>") in model.generation_config.eos_token_id


def test_samples_answer_three_heldout_prompts(sft_run):
    _, out, result, _ = sft_run
    samples = json.loads((out / "samples.json").read_text())
    assert samples == result["samples"] and len(samples) == 3
    assert all(s["prompt"] and s["reference"] and isinstance(s["generation"], str) for s in samples)


def test_sft_loss_curve_is_logged_to_mlflow(sft_run):
    import mlflow

    cfg, _, _, run_id = sft_run
    history = mlflow.MlflowClient().get_metric_history(run_id, "sft_loss")
    assert [m.step for m in history] == list(range(1, 26))


def test_two_ray_train_workers_lower_heldout_answer_loss_as_one_process_does(sft_run, sft_source, tiny_model, tmp_path):
    """The same run as sft_run on 2 Ray Train workers (DDP, gloo): the global batch is split, so the
    held-out answer loss starts at the same value and drops by about as much; the model and the
    split pairs come back through the store."""
    one = sft_run[2]["metrics"]
    cfg = sft_config(tmp_path, sft_source, "align.num_workers=2")
    out = tmp_path / "out"
    two = align(cfg, model_dir=tiny_model, out_dir=out)["metrics"]
    assert two["sft_workers"] == 2 and two["steps"] == 25
    assert two["sft_heldout_answer_loss_before"] == pytest.approx(one["sft_heldout_answer_loss_before"], abs=0.05)
    drop_one = one["sft_heldout_answer_loss_before"] - one["sft_heldout_answer_loss_after"]
    drop_two = two["sft_heldout_answer_loss_before"] - two["sft_heldout_answer_loss_after"]
    assert drop_two == pytest.approx(drop_one, rel=0.15)
    assert (out / "model" / "config.json").exists() and (out / "model" / "tokenizer.json").exists()
    assert len((out / "sft_data" / "heldout.jsonl").read_text().splitlines()) == one["sft_heldout_examples"]


def test_arithmetic_phase_follows_the_fine_tune_and_continues_its_loss_curve(sft_source, tiny_model, tmp_path):
    cfg = sft_config(tmp_path, sft_source, "align.steps=4", "align.warmup_steps=1", "align.arithmetic_steps=3")
    result = align(cfg, model_dir=tiny_model, out_dir=tmp_path / "out")
    assert result["metrics"]["steps"] == 7
    assert [step for step, _ in result["loss_curve"]] == list(range(1, 8))
    assert (tmp_path / "out" / "model" / "config.json").exists()
