"""The preference step with align.method=dpo on the tiny model: a planted preference is learned
and generalizes to held-out pairs; bad pairs are quarantined; the model is saved for later stages."""

from __future__ import annotations

import json

import pytest

from components.align.prefer import prefer
from components.common.config import load_config

DPO_METRICS = {"dpo_reward_accuracy", "dpo_reward_margin", "dpo_logps_chosen", "dpo_logps_rejected"}


@pytest.fixture(scope="module")
def dpo_run(tiny_model, planted_preferences, tmp_path_factory):
    """One 45-step DPO run on the 120 planted pairs plus a malformed line (2), an identical pair (4)
    and a prompt too long for align.max_len (6)."""
    root = tmp_path_factory.mktemp("dpo")
    lines = planted_preferences.read_text(encoding="utf-8").splitlines()
    lines.insert(1, '{"prompt": "truncated')
    lines.insert(3, json.dumps({"prompt": "Sort: cat", "chosen": "cat", "rejected": "cat"}))
    lines.insert(5, json.dumps({"prompt": "Sort: " + "cat " * 60, "chosen": "cat", "rejected": "dog"}))
    source = root / "pairs.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = load_config(
        "tiny",
        [
            f"run.home={root / 'home'}",
            f"align.preferences={source}",
            "align.method=dpo",
            "align.max_len=48",
            "align.pref_heldout_fraction=0.25",
            "align.pref_steps=45",
        ],
    )
    out = root / "out"
    return out, prefer(cfg, model_dir=tiny_model, out_dir=out)


def test_dpo_raises_heldout_preference_accuracy_from_chance_to_at_least_0_8(dpo_run):
    m = dpo_run[1]["metrics"]
    assert 0.3 <= m["dpo_heldout_accuracy_before"] <= 0.7
    assert m["dpo_heldout_accuracy_after"] >= 0.8


def test_dpo_reports_reward_accuracy_margins_and_logps(dpo_run):
    m = dpo_run[1]["metrics"]
    assert m.keys() >= DPO_METRICS
    assert m["dpo_reward_margin"] > 0 and m["dpo_logps_chosen"] > m["dpo_logps_rejected"]
    assert m["pref_pairs"] + m["pref_heldout_pairs"] == 120


def test_bad_pairs_are_quarantined_with_file_line_and_reason(dpo_run):
    out, summary = dpo_run
    rows = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rows] == [
        (2, "invalid_json"),
        (4, "identical_responses"),
        (6, "prompt_too_long"),
    ]
    assert all(r["file"].endswith("pairs.jsonl") for r in rows)
    assert summary["metrics"]["pref_quarantined"] == 3


def test_dpo_model_is_saved_with_its_chat_template(dpo_run):
    from transformers import AutoModelForCausalLM

    from components.common.tokenizer import load_tokenizer

    out, _ = dpo_run
    tok = load_tokenizer(out / "model")
    assert tok.chat_template and "<|assistant|>" in tok.chat_template
    assert AutoModelForCausalLM.from_pretrained(out / "model").num_parameters() > 0


def test_method_none_passes_the_sft_model_through_unchanged(tiny_model, tmp_path):
    cfg = load_config("tiny", [f"run.home={tmp_path / 'home'}"])
    summary = prefer(cfg, model_dir=tiny_model, out_dir=tmp_path / "out")
    assert summary == {"metrics": {}, "method": "none"}
    saved = sorted(p.name for p in (tmp_path / "out" / "model").iterdir())
    assert saved == sorted(p.name for p in tiny_model.iterdir())
