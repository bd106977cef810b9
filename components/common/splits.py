"""Train / held-out membership decided by a record's content, the same in every stage.

Alignment trains on preference pairs and arithmetic problems; evaluation scores the model on held-out
ones. If each stage drew its own split (a seeded shuffle of whatever list it read), a pair held out by
evaluation could be a training pair for alignment as soon as the two read different files, different
record counts or different seeds. Deciding membership from a keyed hash of the record's *content*
makes the split a property of the record: any stage, on any host, in any order, puts it on the same
side, so no evaluation record ever reaches training.
"""

from __future__ import annotations

import hashlib

# A fixed key: changing it reshuffles every split in the product, so it is not a config knob.
_SPLIT_KEY = b"lmforge/heldout/v1"


def heldout_score(content: str) -> float:
    """A uniform number in [0, 1) fixed by ``content`` (blake2b, keyed)."""
    digest = hashlib.blake2b(content.encode("utf-8"), digest_size=8, key=_SPLIT_KEY).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_heldout(content: str, fraction: float) -> bool:
    """Whether the record whose identity is ``content`` belongs to the held-out split.

    ``fraction`` is the expected share held out, in (0, 1). The same ``content`` is held out at every
    larger fraction too, so raising the fraction only moves records from train to held-out.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    return heldout_score(content) < fraction
