"""Informative subsets: keep a representative fraction of the training documents (``curate.select_fraction``).

INGENIOUS (Renduchintala et al., 2023) trains language models on a subset chosen by maximising a
*facility-location* function and keeps about 99% of the full-data quality at a fraction of the
cost. Facility location rewards a subset ``S`` for how well it covers every document:

    F(S) = Σ_i max_{j ∈ S} sim(i, j)

so it prefers documents that are typical of many others (representative) and, once a region is
covered, documents from regions not yet covered (diverse). F is monotone submodular, so the greedy
choice is within 1 − 1/e of the optimum (Nemhauser et al., 1978); the *lazy* greedy (Minoux, 1978)
re-evaluates only candidates whose stale gain could still win, which makes it fast in practice.

Features: every document becomes an L2-normalised vector of its words' counts hashed into
``DIMENSIONS`` buckets (the 64-bit datatrove hash of the lower-cased word), weighted by inverse
document frequency, so sim is cosine similarity of bags of words. The MinHash signatures curation
computes for deduplication estimate the Jaccard similarity of *5-word shingles*: after deduplication
that is ~0 for almost every pair of distinct documents and gives facility location nothing to rank.

Scale: the similarity matrix is dense and quadratic, so (as INGENIOUS does) the documents are cut
into random partitions of at most ``curate.select_partition`` (seeded by ``run.seed``) and each
partition contributes its share; memory is ``partition²`` floats, time grows linearly with the corpus.

``curate.select_method=random`` keeps a seeded random subset of the same size, the baseline the
experiment compares against. Only the train split is subset: held-out data stays whole, so held-out
losses remain comparable across subsets. The choice is recorded in the curation report (and so in
the data card and the dataset manifest, the lineage of every model trained on it).
"""

from __future__ import annotations

import heapq
import math
import random
import re
from collections.abc import Sequence

import numpy as np
from datatrove.utils.hashing import HashConfig, create_hash_func

DIMENSIONS = 4096  # hashed vocabulary: enough to separate topics, small enough for dense partitions
_WORD = re.compile(r"\w+", re.UNICODE)
METHODS = ("facility_location", "random")


def word_vectors(texts: Sequence[str]) -> np.ndarray:
    """(n, DIMENSIONS) float32 rows: TF-IDF of hashed lower-cased words, L2-normalised (0-rows stay 0)."""
    hash_word = create_hash_func(HashConfig(precision=64, hash_fc="xxhash"))
    counts = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in _WORD.findall(text.lower()):
            counts[row, hash_word(word.encode()) % DIMENSIONS] += 1.0
    df = (counts > 0).sum(axis=0)
    idf = np.log((1 + len(texts)) / (1 + df)).astype(np.float32) + 1.0
    vectors = np.log1p(counts) * idf  # sublinear term frequency: one long repeated word does not dominate
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def facility_location(similarity: np.ndarray, k: int) -> list[int]:
    """Indices of ``k`` columns chosen by lazy greedy maximisation of Σ_i max_{j∈S} similarity[i, j].

    ``similarity`` must be non-negative. Ties break toward the lower index, so the result is deterministic.
    """
    n = similarity.shape[0]
    k = min(k, n)
    covered = np.zeros(n, dtype=similarity.dtype)
    # max-heap of (stale upper bound on the gain, index); submodularity: gains only shrink as S grows
    heap = [(-float(g), j) for j, g in enumerate(similarity.sum(axis=0))]
    heapq.heapify(heap)
    chosen: list[int] = []
    while len(chosen) < k:
        _, j = heapq.heappop(heap)
        gain = float(np.maximum(similarity[:, j] - covered, 0).sum())
        if not heap or gain >= -heap[0][0]:  # fresh gain still beats every stale bound: take it
            chosen.append(j)
            covered = np.maximum(covered, similarity[:, j])
        else:
            heapq.heappush(heap, (-gain, j))
    return chosen


def coverage(similarity: np.ndarray, chosen: Sequence[int]) -> float:
    """F(S) / F(all): how much of the full set's facility-location value the subset attains (1 = all)."""
    full = float(similarity.max(axis=1).sum())
    return float(similarity[:, list(chosen)].max(axis=1).sum()) / full if full > 0 and len(chosen) else 0.0


def select_subset(
    texts: Sequence[str], *, fraction: float, method: str, partition: int, seed: int
) -> tuple[list[int], dict]:
    """Indices (sorted) of the documents to keep, and a record of the selection for the report.

    Each random partition of at most ``partition`` documents keeps ``ceil(fraction · size)`` of them.
    """
    if method not in METHODS:
        raise ValueError(f"curate.select_method: must be one of {', '.join(METHODS)}, got {method!r}")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    parts = max(1, math.ceil(len(order) / partition))
    keep: list[int] = []
    coverages: list[float] = []
    for p in range(parts):
        members = order[p::parts]  # round-robin: partitions differ in size by at most one
        k = math.ceil(fraction * len(members))
        if method == "random":
            local = sorted(random.Random(seed + p).sample(range(len(members)), k))
        else:
            x = word_vectors([texts[i] for i in members])
            sim = np.clip(x @ x.T, 0.0, None)
            local = facility_location(sim, k)
            coverages.append(coverage(sim, local))
        keep += [members[i] for i in local]
    record = {
        "method": method,
        "fraction": fraction,
        "candidates": len(texts),
        "selected": len(keep),
        "partitions": parts,
        "partition_size": partition,
        "features": f"tf-idf of words hashed into {DIMENSIONS} buckets, cosine similarity" if coverages else None,
        # facility-location value of the subset as a share of the whole partition's, averaged
        "coverage": sum(coverages) / len(coverages) if coverages else None,
    }
    return sorted(keep), record
