"""Preference pairs from HH-RLHF dialogues and plain JSONL, quarantine, and the shared split."""

from __future__ import annotations

import gzip
import json

import pytest

from components.common.errors import DataError
from components.common.preferences import read_preferences, split_dialogue, split_preferences
from tests.conftest import SHARED_DATA

HH = SHARED_DATA / "hh_rlhf" / "harmless-base-test.jsonl.gz"


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_dialogue_splits_at_the_last_assistant_turn():
    prompt, response = split_dialogue("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: fine")
    assert prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"
    assert response == "fine"


def test_shipped_hh_rlhf_pairs_share_their_prompt():
    pairs, bad = read_preferences(str(HH))
    with gzip.open(HH, "rt") as f:
        assert len(pairs) + len(bad) == sum(1 for _ in f)
    assert len(pairs) > 2000
    assert all(p.prompt.endswith("\n\nAssistant:") and p.chosen != p.rejected for p in pairs)


def test_plain_records_are_read(tmp_path):
    f = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "Q", "chosen": "good", "rejected": "bad"})])
    pairs, bad = read_preferences(str(f))
    assert [(p.prompt, p.chosen, p.rejected, p.line) for p in pairs] == [("Q", "good", "bad", 1)] and not bad


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "invalid_json"),
        ("[1]", "not_an_object"),
        (json.dumps({"prompt": "Q", "chosen": "a"}), "missing_field:rejected"),
        (json.dumps({"prompt": "Q", "chosen": "a", "rejected": 3}), "not_a_string:rejected"),
        (json.dumps({"prompt": "Q", "chosen": " ", "rejected": "b"}), "empty_field:chosen"),
        (json.dumps({"prompt": "Q", "chosen": "same", "rejected": "same"}), "identical_responses"),
        (json.dumps({"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a"}), "no_assistant_turn"),
        (
            json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}),
            "prompts_differ",
        ),
    ],
)
def test_bad_lines_are_quarantined_with_file_line_and_reason(tmp_path, line, reason):
    good = json.dumps({"prompt": "Q", "chosen": "good", "rejected": "bad"})
    f = _write(tmp_path / "p.jsonl", [good, line])
    pairs, bad = read_preferences(str(f))
    assert len(pairs) == 1
    assert [(q.file, q.line, q.reason) for q in bad] == [(str(f), 2, reason)]


def test_a_source_without_any_usable_pair_is_an_error_naming_it(tmp_path):
    f = _write(tmp_path / "p.jsonl", ["{broken"])
    with pytest.raises(DataError, match=r"p\.jsonl: no usable preference pair.*invalid_json"):
        read_preferences(str(f))


def test_split_is_disjoint_and_independent_of_order():
    pairs, _ = read_preferences(str(HH))
    train, heldout = split_preferences(pairs, 0.1)
    train_r, heldout_r = split_preferences(list(reversed(pairs)), 0.1)
    assert {p.identity for p in heldout} == {p.identity for p in heldout_r}
    assert not {p.identity for p in train} & {p.identity for p in heldout}
    assert 0.07 < len(heldout) / len(pairs) < 0.13
