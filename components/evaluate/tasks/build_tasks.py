"""Build the data files of the lm-eval tasks shipped in this directory (deterministic; re-run to check).

``shakespeare_cloze.jsonl`` (task ``lmforge_shakespeare_cloze``): from lines 30,001–40,000 of the
tinyshakespeare file, which the quick-start pretraining corpus (lines 1–20,000) does not contain.
Each speech (the lines under a ``NAME:`` header) is cut into non-overlapping windows of 2–4 context
lines plus the true next line; three distractors are lines of *other* speeches of the same excerpt,
of similar length so that neither ``acc`` (summed log-probability, which favours short lines) nor
``acc_norm`` is decided by length alone. Any line that also occurs verbatim in the training corpus
is never used as context, answer or distractor, so a model cannot score by having memorised it.

``shakespeare_order.jsonl`` (task ``lmforge_shakespeare_order``): a structured cloze a tiny model can
learn from the quick-start corpus. Each cloze example's context and true next line, against three
copies of that line with its words shuffled: same words, same length, so only word order (the
grammar the model has learned) tells them apart.

``arithmetic.jsonl`` (task ``lmforge_arithmetic``): held-out problems of the generated arithmetic task
(:mod:`components.common.arithmetic`, the same generator alignment trains on; a problem's side is
fixed by its text, so none of these is ever trained on), scored by generative exact match.

``arithmetic_1digit.jsonl`` (task ``lmforge_arithmetic_1digit``): every held-out problem of single-digit
addition (the same generator and split; its ~80 training problems are what a tiny model can learn from),
for models too small for ``lmforge_arithmetic``'s two- and three-digit operands.

``gsm8k_mini.jsonl`` (task ``lmforge_gsm8k_mini``): the first records of the GSM8K test split, with
its MIT licence copied beside it as ``LICENSE.gsm8k``. ``gsm8k_fewshot.jsonl``: the pool the task's
few-shot examples are drawn from, the first records of the GSM8K *train* split (never the evaluated
test split, as in lm-eval's own ``gsm8k`` task, whose ``fewshot_split`` is ``train``).

Usage: ``python components/evaluate/tasks/build_tasks.py [--shared-data DIR] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from collections.abc import Iterable
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TASKS_DIR.parents[2]
TRAINING_EXCERPT = REPO_ROOT / "pipelines" / "data" / "quickstart" / "tinyshakespeare.txt"
DEFAULT_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

CLOZE_FILE = "shakespeare_cloze.jsonl"
ORDER_FILE = "shakespeare_order.jsonl"
ARITHMETIC_FILE = "arithmetic.jsonl"
ARITHMETIC_1DIGIT_FILE = "arithmetic_1digit.jsonl"
GSM8K_FILE = "gsm8k_mini.jsonl"
GSM8K_FEWSHOT_FILE = "gsm8k_fewshot.jsonl"
ARITHMETIC_EXAMPLES = 200
MIN_ORDER_WORDS = 5  # fewer words leave too few distinct shuffles
CLOZE_LINES = (30_000, 40_000)  # 0-based slice: lines 30,001–40,000 of input.txt
CLOZE_EXAMPLES = 500
GSM8K_EXAMPLES = 100
GSM8K_FEWSHOT_POOL = 50  # 5-shot prompts sampled (seeded) from 50 train records: varied, and small to ship
SEED = 20240601
MIN_ANSWER_CHARS = 12  # shorter lines ("Ay, my lord.") are near-identical across speeches
LENGTH_RATIO = 0.25  # distractors are within ±25% of the answer's length when enough such lines exist


def parse_speeches(lines: list[str], first_line_no: int) -> list[list[tuple[int, str]]]:
    """Speeches as lists of (1-based line number, stripped text); headers and blank lines dropped."""
    speeches: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] | None = None
    for offset, raw in enumerate(lines):
        text = raw.strip()
        if not text:
            current = None
        elif current is None and text.endswith(":"):
            current = []
            speeches.append(current)
        elif current is not None:
            current.append((first_line_no + offset, text))
        # a block that does not open with a "NAME:" header (the excerpt starting mid-speech) is skipped
    return speeches


def cloze_examples(source_lines: list[str], training_lines: set[str], n: int, seed: int) -> list[dict]:
    """``n`` multiple-choice next-line examples from ``source_lines`` (already the held-out excerpt)."""
    rng = random.Random(seed)
    speeches = parse_speeches(source_lines, CLOZE_LINES[0] + 1)

    def usable(text: str) -> bool:
        return text not in training_lines

    windows: list[tuple[int, list[tuple[int, str]]]] = []  # (speech index, context lines + answer)
    for s_idx, speech in enumerate(speeches):
        start = 0
        while True:
            k = rng.choice((2, 3, 4))
            window = speech[start : start + k + 1]
            if len(window) < k + 1:
                break
            answer = window[-1][1]
            if all(usable(t) for _, t in window) and len(answer) >= MIN_ANSWER_CHARS:
                windows.append((s_idx, window))
            start += k + 1
    if len(windows) < n:
        raise ValueError(f"only {len(windows)} cloze windows in the excerpt, {n} requested")

    # Distractor pool: every usable line, deduplicated, in text order (so sampling is deterministic).
    pool: list[tuple[int, str]] = []
    seen: set[str] = set()
    for s_idx, speech in enumerate(speeches):
        for _, text in speech:
            if usable(text) and len(text) >= MIN_ANSWER_CHARS and text not in seen:
                seen.add(text)
                pool.append((s_idx, text))

    chosen = sorted(rng.sample(range(len(windows)), n))
    examples = []
    for i, w_idx in enumerate(chosen):
        s_idx, window = windows[w_idx]
        answer_no, answer = window[-1]
        others = [t for s, t in pool if s != s_idx and t != answer]
        similar = [t for t in others if abs(len(t) - len(answer)) <= LENGTH_RATIO * len(answer)]
        distractors = rng.sample(similar if len(similar) >= 3 else others, 3)
        choices = [answer, *distractors]
        rng.shuffle(choices)
        examples.append(
            {
                "id": f"shakespeare-cloze-{i:04d}",
                "context": "\n".join(t for _, t in window[:-1]),
                "choices": choices,
                "label": choices.index(answer),
                "answer_line": answer_no,
            }
        )
    return examples


def order_examples(cloze: list[dict], seed: int) -> list[dict]:
    """For each cloze example with a long enough answer: the true line against 3 word shuffles of it."""
    rng = random.Random(seed)
    out = []
    for ex in cloze:
        answer = ex["choices"][ex["label"]]
        words = answer.split()
        if len(words) < MIN_ORDER_WORDS:
            continue
        shuffles: list[str] = []
        while len(shuffles) < 3:
            candidate = words[:]
            rng.shuffle(candidate)
            text = " ".join(candidate)
            if text != answer and text not in shuffles:
                shuffles.append(text)
        choices = [answer, *shuffles]
        rng.shuffle(choices)
        out.append(
            {
                "id": ex["id"].replace("cloze", "order"),
                "context": ex["context"],
                "choices": choices,
                "label": choices.index(answer),
            }
        )
    return out


def arithmetic_examples(n: int) -> list[dict]:
    from components.common.arithmetic import generate

    return [
        {"id": f"arithmetic-{i:04d}", "question": p.prompt, "answer": p.answer}
        for i, p in enumerate(generate(n, split="heldout", seed=0))
    ]


def arithmetic_1digit_examples() -> list[dict]:
    from components.common.arithmetic import SINGLE_DIGIT_ADDITION, every_problem

    return [
        {"id": f"arithmetic-1digit-{i:04d}", "question": p.prompt, "answer": p.answer}
        for i, p in enumerate(every_problem(split="heldout", **SINGLE_DIGIT_ADDITION))
    ]


def gsm8k_examples(records: Iterable[dict], n: int, split: str = "test") -> list[dict]:
    out = []
    for i, rec in enumerate(records):
        if i == n:
            break
        out.append({"id": f"gsm8k-{split}-{i:04d}", "question": rec["question"], "answer": rec["answer"]})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build(shared_data: Path = DEFAULT_SHARED_DATA, out_dir: Path = TASKS_DIR) -> dict[str, int]:
    """Write the tasks' data files into ``out_dir``; returns the number of records per file."""
    lines = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").splitlines()
    training_lines = {t.strip() for t in TRAINING_EXCERPT.read_text(encoding="utf-8").splitlines() if t.strip()}
    cloze = cloze_examples(lines[slice(*CLOZE_LINES)], training_lines, CLOZE_EXAMPLES, SEED)
    gsm8k_dir = shared_data / "gsm8k"
    with (gsm8k_dir / "test.jsonl").open(encoding="utf-8") as f:
        gsm8k = gsm8k_examples((json.loads(line) for line in f), GSM8K_EXAMPLES)
    with (gsm8k_dir / "train.jsonl").open(encoding="utf-8") as f:
        gsm8k_fewshot = gsm8k_examples((json.loads(line) for line in f), GSM8K_FEWSHOT_POOL, split="train")

    order = order_examples(cloze, SEED)
    arithmetic = arithmetic_examples(ARITHMETIC_EXAMPLES)
    arithmetic_1digit = arithmetic_1digit_examples()

    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / CLOZE_FILE, cloze)
    write_jsonl(out_dir / ORDER_FILE, order)
    write_jsonl(out_dir / ARITHMETIC_FILE, arithmetic)
    write_jsonl(out_dir / ARITHMETIC_1DIGIT_FILE, arithmetic_1digit)
    write_jsonl(out_dir / GSM8K_FILE, gsm8k)
    write_jsonl(out_dir / GSM8K_FEWSHOT_FILE, gsm8k_fewshot)
    shutil.copyfile(gsm8k_dir / "LICENSE", out_dir / "LICENSE.gsm8k")
    return {
        CLOZE_FILE: len(cloze),
        ORDER_FILE: len(order),
        ARITHMETIC_FILE: len(arithmetic),
        ARITHMETIC_1DIGIT_FILE: len(arithmetic_1digit),
        GSM8K_FILE: len(gsm8k),
        GSM8K_FEWSHOT_FILE: len(gsm8k_fewshot),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shared-data", type=Path, default=DEFAULT_SHARED_DATA, help="folder with tinyshakespeare/ and gsm8k/"
    )
    parser.add_argument("--out", type=Path, default=TASKS_DIR, help="where to write the data files")
    args = parser.parse_args()
    for name, count in build(args.shared_data, args.out).items():
        print(f"{args.out / name}: {count} records")


if __name__ == "__main__":
    main()
