"""Document-level, deterministic train / held-out split.

Each document's split depends only on its text and ``run.seed`` (BLAKE2b of both, read as a number
in [0, 1)), never on its position: adding or removing other files leaves every other document's
split unchanged, and a duplicate can never land on both sides. Tiny corpora still get a usable
split: with ≥ 2 documents at least one is held out (evaluation needs one), and at least one document always trains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from components.curate.document import Document

TRAIN, HELDOUT = "train", "heldout"


def split_score(text: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_splits(docs: Sequence[Document], fraction: float, seed: int) -> list[str]:
    """The split of each document in ``docs`` (same order)."""
    scores = [split_score(d.text, seed) for d in docs]
    splits = [HELDOUT if s < fraction else TRAIN for s in scores]
    if len(docs) >= 2 and HELDOUT not in splits:
        splits[min(range(len(docs)), key=scores.__getitem__)] = HELDOUT
    if docs and TRAIN not in splits:
        splits[max(range(len(docs)), key=scores.__getitem__)] = TRAIN
    return splits
