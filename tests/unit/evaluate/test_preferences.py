"""Preference accuracy on held-out pairs: only the held-out side is scored, and the scoring prefers
what a trained model finds more likely."""

from __future__ import annotations

import json

import pytest

from components.common.model_loading import load_model
from components.common.splits import is_heldout
from components.common.tokenizer import load_tokenizer
from components.evaluate.preferences import heldout_pairs, preference_accuracy
from components.evaluate.tasks import TASKS_DIR
from tests.conftest import SHARED_DATA

HH = SHARED_DATA / "hh_rlhf" / "harmless-base-test.jsonl.gz"


@pytest.mark.skipif(not HH.is_file(), reason=f"needs the shared HH-RLHF file ({HH})")
def test_only_pairs_on_the_held_out_side_are_scored():
    pairs = heldout_pairs(str(HH), 0.2, 0)
    assert pairs and all(is_heldout(p.identity, 0.2) for p in pairs)
    assert heldout_pairs(str(HH), 0.2, 7) == pairs[:7]


def test_trained_model_prefers_the_real_line_over_its_shuffled_words(tmp_path, trained_tiny_model):
    # Plain pairs from the word-order task: chosen = the true next line, rejected = a shuffle of it.
    source = tmp_path / "pairs.jsonl"
    with source.open("w") as f:
        for line in (TASKS_DIR / "shakespeare_order.jsonl").read_text().splitlines()[:400]:
            ex = json.loads(line)
            answer = ex["choices"][ex["label"]]
            rejected = next(c for c in ex["choices"] if c != answer)
            f.write(json.dumps({"prompt": ex["context"] + "\n", "chosen": answer, "rejected": rejected}) + "\n")
    pairs = heldout_pairs(str(source), 0.2, 40)
    model, tok = load_model(trained_tiny_model), load_tokenizer(trained_tiny_model)
    result = preference_accuracy(model, tok, pairs, max_len=64)
    assert result["pairs"] == len(pairs) > 20
    assert result["acc"] - 1.96 * result["acc_stderr"] > 0.5
