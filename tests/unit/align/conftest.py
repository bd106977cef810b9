"""Fixtures of the align tests: preference pairs with a planted, learnable preference."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

WORDS = ["apple", "bird", "cat", "dog", "egg", "fish", "goat", "hat", "ink", "jam"]


def planted_pairs(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct ``{prompt, chosen, rejected}`` records where the chosen response lists the prompt's
    three words in alphabetical order and the rejected one in reverse order.

    Both responses hold the same tokens, so a model that knows nothing prefers neither (held-out
    accuracy about 0.5); a model that learned "ascending is better" prefers every chosen one, also on
    word triples it never saw (the held-out split is by content)."""
    rng = random.Random(seed)
    seen, records = set(), []
    while len(records) < n:
        words = tuple(sorted(rng.sample(WORDS, 3)))
        if words in seen:
            continue
        seen.add(words)
        shown = list(words)
        rng.shuffle(shown)
        records.append(
            {"prompt": f"Sort: {' '.join(shown)}", "chosen": " ".join(words), "rejected": " ".join(reversed(words))}
        )
    return records


@pytest.fixture(scope="session")
def planted_preferences(tmp_path_factory) -> Path:
    """A JSONL file of all 120 planted pairs (every 3-word subset of :data:`WORDS`)."""
    path = tmp_path_factory.mktemp("preferences") / "planted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in planted_pairs(120)), encoding="utf-8")
    return path
