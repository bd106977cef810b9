"""Arithmetic problems with exact answers, generated at run time, and the verifier that checks them.

A 0.3M-parameter model cannot solve GSM8K, so the tiny profile needs a task it can learn and a judge
that knows the answer: ``"What is 47 + 385?"`` → ``"432"``. Alignment trains on it (SFT, expert
iteration, online DPO with a verifier as judge) and evaluation scores it (exact match); both draw from
this one generator, and a problem's side (train or held-out) is fixed by its text
(:mod:`components.common.splits`), so no evaluation problem is ever trained on.

The verifier reads a final answer the way GSM8K writes one (``#### 432``) and otherwise takes the last
integer in the text, so the same function judges GSM8K generations too.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from components.common.splits import is_heldout

OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
#: single-digit addition, the space :func:`every_problem` lists for the task tiny can learn: the
#: lmforge_arithmetic_1digit task scores its held-out side, the SFT arithmetic phase
#: (``align.arithmetic_steps``) trains on its training side; one definition keeps the two sides of one space
SINGLE_DIGIT_ADDITION = {"digits": (1, 1), "operators": "+"}
_FINAL = re.compile(r"####\s*(-?[\d,]+(?:\.\d+)?)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str

    @property
    def prompt(self) -> str:
        return f"What is {self.question}?"


def generate(
    n: int,
    *,
    split: str,
    seed: int = 0,
    digits: tuple[int, int] = (2, 3),
    operators: str = "+-",
    heldout_fraction: float = 0.2,
) -> list[Problem]:
    """``n`` distinct problems of ``split`` (``"train"`` or ``"heldout"``), deterministic in ``seed``.

    Operands have between ``digits[0]`` and ``digits[1]`` digits; ``operators`` is a string of
    ``+``, ``-`` and ``*``. Raises ``ValueError`` naming the argument when the space of problems is
    too small for ``n`` distinct ones of that split.
    """
    lo, hi = _operand_range(split, digits, operators)
    space = (hi - lo + 1) ** 2 * len(operators)
    share = heldout_fraction if split == "heldout" else 1 - heldout_fraction
    if n > space * share / 2:
        raise ValueError(f"{n} distinct {split} problems do not fit in digits={digits}, operators={operators!r}")
    rng = random.Random(f"arithmetic/{seed}")
    seen: set[str] = set()
    problems: list[Problem] = []
    while len(problems) < n:
        a, b, op = rng.randint(lo, hi), rng.randint(lo, hi), rng.choice(operators)
        question = f"{a} {op} {b}"
        if question in seen:
            continue
        seen.add(question)
        if (problem := _on_side(a, op, b, split, heldout_fraction)) is not None:
            problems.append(problem)
    return problems


def every_problem(
    *, split: str, digits: tuple[int, int] = (1, 1), operators: str = "+", heldout_fraction: float = 0.2
) -> list[Problem]:
    """Every problem of ``split`` in a space small enough to list (single-digit addition: 100 problems,
    about 80 train and 20 held out), in operand order; the sides are :func:`generate`'s, by text."""
    lo, hi = _operand_range(split, digits, operators)
    if digits[1] > 2:
        raise ValueError(f"every_problem lists at most two-digit operands, got digits={digits}")
    listed = (
        _on_side(a, op, b, split, heldout_fraction)
        for a in range(lo, hi + 1)
        for b in range(lo, hi + 1)
        for op in operators
    )
    return [problem for problem in listed if problem is not None]


def _operand_range(split: str, digits: tuple[int, int], operators: str) -> tuple[int, int]:
    """The smallest and largest operand of ``digits``, after checking the arguments both listings take."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    low, high = digits
    if not 1 <= low <= high:
        raise ValueError(f"digits must be (min, max) with 1 <= min <= max, got {digits}")
    unknown = set(operators) - set(OPERATORS)
    if not operators or unknown:
        raise ValueError(f"operators must be a non-empty string of {''.join(OPERATORS)}, got {operators!r}")
    return 10 ** (low - 1) if low > 1 else 0, 10**high - 1


def _on_side(a: int, op: str, b: int, split: str, heldout_fraction: float) -> Problem | None:
    """``a op b`` as a problem if its text puts it on ``split``'s side, else None."""
    question = f"{a} {op} {b}"
    if is_heldout(question, heldout_fraction) != (split == "heldout"):
        return None
    return Problem(question, str(OPERATORS[op](a, b)))


def final_answer(text: str) -> str | None:
    """The answer a generation commits to: the number after ``####`` if any, else its last number;
    commas dropped and ``12.0`` read as ``12``. ``None`` if the text has no number."""
    match = _FINAL.search(text)
    found = match.group(1) if match else (_NUMBER.findall(text) or [None])[-1]
    if found is None:
        return None
    found = found.replace(",", "")
    if "." in found and float(found).is_integer():
        found = str(int(float(found)))
    return found


def verify(text: str, answer: str) -> bool:
    """Whether the generation ``text`` states ``answer`` as its final answer."""
    return final_answer(text) == final_answer(answer)
