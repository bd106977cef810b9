"""The data of the shipped lm-eval tasks: deterministic, correct, and disjoint from the training excerpt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.evaluate.tasks import TASKS_DIR
from components.evaluate.tasks.build_tasks import (
    ARITHMETIC_1DIGIT_FILE,
    ARITHMETIC_FILE,
    CLOZE_FILE,
    GSM8K_FEWSHOT_FILE,
    GSM8K_FILE,
    ORDER_FILE,
    TRAINING_EXCERPT,
    build,
)

SHARED_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "tinyshakespeare" / "input.txt").is_file(), reason=f"shared data sets not found at {SHARED_DATA}"
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@needs_shared_data
def test_builder_is_deterministic_and_reproduces_the_committed_files(tmp_path):
    counts_a = build(SHARED_DATA, tmp_path / "a")
    build(SHARED_DATA, tmp_path / "b")
    for name in (CLOZE_FILE, ORDER_FILE, ARITHMETIC_FILE, ARITHMETIC_1DIGIT_FILE, GSM8K_FILE, GSM8K_FEWSHOT_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() == (TASKS_DIR / name).read_bytes(), (
            f"rerun build_tasks.py: {name} is stale"
        )
    assert counts_a == {
        CLOZE_FILE: 500,
        ORDER_FILE: 470,
        ARITHMETIC_FILE: 200,
        ARITHMETIC_1DIGIT_FILE: 25,
        GSM8K_FILE: 100,
        GSM8K_FEWSHOT_FILE: 50,
    }


def test_cloze_lines_never_occur_in_the_training_excerpt():
    training = {line.strip() for line in TRAINING_EXCERPT.read_text(encoding="utf-8").splitlines()}
    for ex in read_jsonl(TASKS_DIR / CLOZE_FILE):
        for line in [*ex["context"].split("\n"), *ex["choices"]]:
            assert line not in training, f"{ex['id']}: {line!r} is in the training corpus"


@needs_shared_data
def test_cloze_answer_is_the_line_that_follows_the_context_in_the_source():
    source = (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").splitlines()
    examples = read_jsonl(TASKS_DIR / CLOZE_FILE)
    for ex in examples:
        context = ex["context"].split("\n")
        answer_index = ex["answer_line"] - 1
        assert 30_000 <= answer_index - len(context) < answer_index < 40_000
        assert 2 <= len(context) <= 4
        assert ex["choices"][ex["label"]] == source[answer_index].strip()
        assert [s.strip() for s in source[answer_index - len(context) : answer_index]] == context
        assert len(set(ex["choices"])) == 4
    # the answer is not always in the same slot
    assert len({ex["label"] for ex in examples}) == 4


def test_gsm8k_copy_keeps_its_licence_beside_it():
    assert "MIT" in (TASKS_DIR / "LICENSE.gsm8k").read_text()
    records = read_jsonl(TASKS_DIR / GSM8K_FILE)
    assert len(records) == 100 and all("####" in r["answer"] for r in records)


def test_order_choices_are_the_answer_line_and_three_shuffles_of_its_words():
    cloze = {ex["id"]: ex for ex in read_jsonl(TASKS_DIR / CLOZE_FILE)}
    for ex in read_jsonl(TASKS_DIR / ORDER_FILE):
        source = cloze[ex["id"].replace("order", "cloze")]
        answer = ex["choices"][ex["label"]]
        assert answer == source["choices"][source["label"]] and ex["context"] == source["context"]
        assert len(set(ex["choices"])) == 4
        assert all(sorted(c.split()) == sorted(answer.split()) for c in ex["choices"])


def test_arithmetic_problems_are_held_out_and_correct():
    from components.common.arithmetic import OPERATORS
    from components.common.splits import is_heldout

    for ex in read_jsonl(TASKS_DIR / ARITHMETIC_FILE) + read_jsonl(TASKS_DIR / ARITHMETIC_1DIGIT_FILE):
        question = ex["question"].removeprefix("What is ").removesuffix("?")
        a, op, b = question.split(" ")
        assert is_heldout(question, 0.2)
        assert ex["answer"] == str(OPERATORS[op](int(a), int(b)))
