"""Reading SFT pairs: quarantine of bad lines with file and line, limits, the held-out split."""

from __future__ import annotations

import json

import pytest

from components.align.data import SftPair, read_pairs, split_heldout, write_quarantine
from components.common.errors import DataError


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_malformed_lines_are_quarantined_with_line_numbers(tmp_path):
    src = _write(
        tmp_path / "sft.jsonl",
        [
            json.dumps({"question": "q1", "answer": "a1"}),
            "{not json",
            json.dumps(["a", "list"]),
            json.dumps({"question": "q4"}),
            json.dumps({"question": 5, "answer": "a5"}),
            json.dumps({"question": "  ", "answer": "a6"}),
            json.dumps({"question": "q7", "answer": "a7"}),
        ],
    )
    pairs, bad = read_pairs(str(src), "question", "answer")
    assert [(p.prompt, p.line) for p in pairs] == [("q1", 1), ("q7", 7)]
    assert [(q.line, q.reason) for q in bad] == [
        (2, "invalid_json"),
        (3, "not_an_object"),
        (4, "missing_field:answer"),
        (5, "not_a_string:question"),
        (6, "empty_field:question"),
    ]
    out = tmp_path / "out" / "quarantine.jsonl"
    write_quarantine(out, bad)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"file": str(src.resolve()), "line": 2, "reason": "invalid_json", "excerpt": "{not json"}


def test_blank_lines_are_skipped_not_quarantined(tmp_path):
    src = _write(tmp_path / "sft.jsonl", [json.dumps({"question": "q", "answer": "a"}), "", "   "])
    pairs, bad = read_pairs(str(src), "question", "answer")
    assert len(pairs) == 1 and bad == []


def test_no_valid_line_raises_data_error_naming_the_file(tmp_path):
    src = _write(tmp_path / "broken.jsonl", ["{oops", json.dumps({"prompt": "p"})])
    with pytest.raises(DataError, match=r"broken\.jsonl.*2 lines quarantined"):
        read_pairs(str(src), "question", "answer")


def test_max_pairs_keeps_the_first_pairs_in_file_order(tmp_path):
    src = _write(tmp_path / "sft.jsonl", [json.dumps({"question": f"q{i}", "answer": "a"}) for i in range(10)])
    pairs, _ = read_pairs(str(src), "question", "answer", max_pairs=3)
    assert [p.prompt for p in pairs] == ["q0", "q1", "q2"]


def test_quickstart_gsm8k_is_the_default_source_and_reads_cleanly():
    pairs, bad = read_pairs("quickstart/gsm8k_train.jsonl", "question", "answer", max_pairs=50)
    assert len(pairs) == 50 and bad == []
    assert "####" in pairs[0].response


def _pairs(n):
    return [SftPair(f"q{i}", f"a{i}", "f", i) for i in range(n)]


def test_heldout_split_is_deterministic_for_a_seed():
    assert split_heldout(_pairs(100), 0.05, seed=7) == split_heldout(_pairs(100), 0.05, seed=7)
    assert split_heldout(_pairs(100), 0.05, seed=7)[1] != split_heldout(_pairs(100), 0.05, seed=8)[1]


def test_heldout_split_holds_out_about_five_percent_and_at_least_one():
    train, heldout = split_heldout(_pairs(100), 0.05, seed=1)
    assert len(heldout) == 5 and len(train) == 95
    assert not {p.prompt for p in train} & {p.prompt for p in heldout}
    train, heldout = split_heldout(_pairs(3), 0.05, seed=1)
    assert len(heldout) == 1 and len(train) == 2


def test_heldout_split_needs_two_pairs():
    with pytest.raises(DataError, match="at least 2"):
        split_heldout(_pairs(1), 0.05, seed=1)


def test_pairs_are_read_from_an_s3_prefix_including_gzip(s3_server, tmp_path):
    import gzip

    from components.common.storage import open_store

    store = open_store("s3://sft", s3_endpoint=s3_server, s3_secure=False)
    store.write_text("s3://sft/data/a.jsonl", json.dumps({"question": "q1", "answer": "a1"}) + "\n{bad\n")
    store.write_bytes(
        "s3://sft/data/b.jsonl.gz", gzip.compress(json.dumps({"question": "q2", "answer": "a2"}).encode())
    )
    pairs, bad = read_pairs("s3://sft/data/", "question", "answer", store=store)
    assert sorted(p.prompt for p in pairs) == ["q1", "q2"]
    assert [(q.file, q.line, q.reason) for q in bad] == [("s3://sft/data/a.jsonl", 2, "invalid_json")]


def test_chat_messages_record_is_read_with_every_turn(tmp_path):
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": turns}) + "\n")
    pairs, bad = read_pairs(str(path), "question", "answer")
    assert bad == [] and pairs[0].is_chat
    assert pairs[0].turns() == turns and pairs[0].response == "4"


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([], "bad_messages:not_a_list"),
        ([{"role": "user", "content": "hi"}], "bad_messages:last_turn_not_assistant"),
        ([{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}], "bad_messages:unknown_role"),
        ([{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}], "bad_messages:empty_turn"),
        ([{"role": "user"}, {"role": "assistant", "content": "x"}], "bad_messages:turn_without_content"),
    ],
)
def test_malformed_chat_record_is_quarantined_with_its_reason(tmp_path, messages, reason):
    path = tmp_path / "chat.jsonl"
    good = {"question": "q", "answer": "a"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"messages": messages}) + "\n")
    _, bad = read_pairs(str(path), "question", "answer")
    assert [(q.line, q.reason) for q in bad] == [(2, reason)]
