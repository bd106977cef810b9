"""The generated arithmetic task and its verifier."""

from __future__ import annotations

import pytest

from components.common.arithmetic import every_problem, final_answer, generate, verify


def test_generation_is_deterministic_in_the_seed():
    assert generate(50, split="train", seed=3) == generate(50, split="train", seed=3)
    assert generate(50, split="train", seed=3) != generate(50, split="train", seed=4)


def test_train_and_heldout_problems_never_overlap_across_seeds():
    train = {p.question for seed in range(3) for p in generate(300, split="train", seed=seed)}
    heldout = {p.question for seed in range(3) for p in generate(100, split="heldout", seed=seed)}
    assert train and heldout and not train & heldout


def test_answers_are_the_exact_results():
    for p in generate(100, split="train", operators="+-*"):
        a, op, b = p.question.split()
        assert int(p.answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert p.prompt == f"What is {p.question}?"


def test_operands_have_the_requested_digits():
    for p in generate(100, split="train", digits=(3, 3)):
        a, _, b = p.question.split()
        assert 100 <= int(a) <= 999 and 100 <= int(b) <= 999


def test_too_many_problems_for_the_space_is_refused():
    with pytest.raises(ValueError, match="do not fit"):
        generate(500, split="heldout", digits=(1, 1), operators="+")


def test_unknown_operator_is_refused():
    with pytest.raises(ValueError, match="operators"):
        generate(5, split="train", operators="/")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Natalia sold 48 clips... #### 72", "72"),
        ("#### 1,234", "1234"),
        ("the answer is 12.0", "12"),
        ("first 3 then 47", "47"),
        ("-5", "-5"),
        ("no number here", None),
    ],
)
def test_final_answer_reads_gsm8k_marks_and_last_numbers(text, expected):
    assert final_answer(text) == expected


def test_verify_compares_final_answers():
    assert verify("47 + 385 = 432", "432")
    assert verify("#### 432", "432")
    assert not verify("431", "432")
    assert not verify("", "432")


def test_every_problem_splits_the_whole_space_by_text_as_generate_does():
    train, heldout = every_problem(split="train"), every_problem(split="heldout")
    assert len(train) + len(heldout) == 100 and not {p.question for p in train} & {p.question for p in heldout}
    assert {p.question for p in generate(10, split="heldout", digits=(1, 1), operators="+")} <= {
        p.question for p in heldout
    }
