"""Exact and near-duplicate removal, across all inputs and incrementally against a previous dataset.

Near duplicates: datatrove's MinHash LSH in its own stages. ``MinhashDedupSignature`` ends the
per-document pipeline (each task hashes the documents it wrote, in order), then
``MinhashDedupBuckets`` (one task per band) pairs documents whose band signatures collide, and
``MinhashDedupCluster`` joins the pairs into clusters (union-find) and names every member but one
(the cluster's root) for removal. The per-task ``.remove``/``.clusters`` files are read here by
:class:`DedupDecisions`.

Incremental: the buckets stage also matches against a *signature index* and writes this run's new
signatures to it. A dataset keeps its index in ``dedup/index`` (plus ``dedup/exact_hashes.npy`` and
the MinHash parameters); a run with ``curate.dedup_previous`` copies the previous index in first, so
any document that (near-)duplicates previously curated text joins a cluster rooted at the index and
is dropped as ``seen_in_previous``, and the new dataset's index covers both runs.

Exact duplicates: :class:`ExactDedupFilter` on the content hash (which is also the document id),
applied after the MinHash decision so that only kept documents enter its memory (16 bytes each): a
document whose exact twin was dropped as a near duplicate must not be dropped again as an exact one.
It also catches duplicates too short to have a MinHash signature (fewer words than the shingle size).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.dedup.minhash import SENTINEL, MinhashConfig
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.hashing import HashConfig

from components.common.errors import ConfigError
from components.curate.document import content_hash

INDEX_DIR, EXACT_FILE, PARAMS_FILE = "dedup/index", "dedup/exact_hashes.npy", "dedup/minhash.json"
HASH_DTYPE = np.dtype("V16")  # a 128-bit content hash as raw bytes


class ExactDedupFilter(BaseFilter):
    name = "exact_dedup"

    def __init__(self, previous: set[bytes] | None = None) -> None:
        super().__init__()
        self.previous = previous or set()
        self.seen: set[bytes] = set()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if not doc.id:
            doc.id = content_hash(doc.text)
        key = bytes.fromhex(doc.id)
        if key in self.previous:
            return False, "seen_in_previous"
        if key in self.seen:
            return False, "exact_duplicate"
        self.seen.add(key)
        return True


# datatrove hashes shingles with xxhash by default, but its wrapper passes str, which xxhash >= 4 (the
# version lmforge pins for other code) rejects; datatrove's SHA-1 hash takes str. Same 64-bit quality.
HASH = HashConfig(precision=64, hash_fc="sha1")


def minhash_params(cfg) -> dict:
    """The MinHash parameters a dataset's index depends on (saved with it, compared on reuse)."""
    c = cfg.curate
    return {
        "n_grams": c.minhash_ngrams,
        "num_buckets": c.minhash_bands,
        "hashes_per_bucket": c.minhash_rows,
        "seed": cfg.run.seed,
        "hash": f"{HASH.hash_fc}{HASH.precision}",
    }


def minhash_config(params: dict) -> MinhashConfig:
    return MinhashConfig(**{k: v for k, v in params.items() if k != "hash"}, hash_config=HASH)


def carry_previous(previous: str, out_dir: Path, params: dict) -> set[bytes]:
    """Copy ``previous``'s dedup index into ``out_dir`` and return its exact hashes ('' → empty set)."""
    if not previous:
        return set()
    prev = Path(previous)
    if not (prev / PARAMS_FILE).is_file():
        raise ConfigError(f"curate.dedup_previous: {prev} holds no {PARAMS_FILE}; is it a dataset curated by lmforge?")
    theirs = json.loads((prev / PARAMS_FILE).read_text())
    if theirs != params:
        raise ConfigError(
            f"curate.dedup_previous: {prev} was deduplicated with MinHash {theirs}, this run uses {params}; "
            "signatures are only comparable with equal minhash_ngrams/bands/rows and run.seed"
        )
    if (prev / INDEX_DIR).is_dir():
        shutil.copytree(prev / INDEX_DIR, out_dir / INDEX_DIR, dirs_exist_ok=True)
    hashes = np.load(prev / EXACT_FILE) if (prev / EXACT_FILE).is_file() else np.zeros(0, HASH_DTYPE)
    return {h.tobytes() for h in hashes}


def save_index(out_dir: Path, params: dict, previous: set[bytes], kept_ids: list[str]) -> None:
    """Persist what the next incremental run compares against (the MinHash index is already in place)."""
    (out_dir / PARAMS_FILE).parent.mkdir(parents=True, exist_ok=True)
    (out_dir / PARAMS_FILE).write_text(json.dumps(params))
    keys = sorted(previous | {bytes.fromhex(i) for i in kept_ids})
    np.save(out_dir / EXACT_FILE, np.frombuffer(b"".join(keys), dtype=HASH_DTYPE))


class DedupDecisions:
    """The MinHash cluster stage's verdicts, per task: who is removed, and why.

    ``reason(rank, index)`` is ``None`` (keep), ``"near_duplicate"``, or ``"seen_in_previous"`` (its
    cluster contains the previous run's index). ``cluster_sizes()`` is ``{size: clusters}`` over this
    run's documents, for the data card.
    """

    def __init__(self, cluster_dir: Path | None) -> None:
        self.remove: dict[int, set[int]] = {}
        self.cluster_of: dict[tuple[int, int], int] = {}
        self.previous_clusters: set[int] = set()
        if cluster_dir is None or not cluster_dir.is_dir():
            return
        for path in cluster_dir.glob("*.remove"):
            self.remove[int(path.stem)] = set(np.fromfile(path, dtype="<u4").tolist())
        for path in cluster_dir.glob("*.clusters"):
            pairs = np.fromfile(path, dtype="<u4").reshape(-1, 2)
            if int(path.stem) == SENTINEL:  # the index's own node: its cluster id marks previous matches
                self.previous_clusters.update(pairs[:, 1].tolist())
            else:
                rank = int(path.stem)
                self.cluster_of.update(((rank, int(d)), int(c)) for d, c in pairs)

    def reason(self, rank: int, index: int) -> str | None:
        if index not in self.remove.get(rank, ()):
            return None
        if self.cluster_of.get((rank, index)) in self.previous_clusters:
            return "seen_in_previous"
        return "near_duplicate"

    def cluster_sizes(self) -> dict[str, int]:
        sizes = Counter(c for c in self.cluster_of.values() if c not in self.previous_clusters)
        return {str(size): n for size, n in sorted(Counter(sizes.values()).items())}


def dedup_documents(
    docs_dir: Path, tasks: int, decisions: DedupDecisions, previous: set[bytes]
) -> tuple[list[Document], dict, dict[str, list[str]]]:
    """Read the per-document stage's output in task order and keep one document per duplicate group.

    Returns the kept documents, the ``dedup`` report entry and up to 3 dropped examples per reason.
    """
    import orjson

    from components.curate.base import EXAMPLE_CHARS, EXAMPLES_PER_RULE
    from components.curate.document import Document as LmDocument

    exact = ExactDedupFilter(previous)
    kept: list[Document] = []
    rules: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    n_in = 0
    for rank in range(tasks):
        path = docs_dir / f"{rank:05d}.jsonl"
        if not path.is_file():  # a task whose documents were all dropped writes no file
            continue
        with path.open("rb") as fh:
            for index, line in enumerate(fh):
                row = orjson.loads(line)
                meta = row["metadata"]
                doc = LmDocument(row["text"], meta.pop("file"), meta.pop("line"), row.get("id", ""), meta)
                n_in += 1
                reason = decisions.reason(rank, index)
                if reason is None:
                    verdict = exact.filter(doc)
                    reason = None if verdict is True else verdict[1]
                if reason is None:
                    kept.append(doc)
                    continue
                rules[reason] += 1
                sample = examples.setdefault(reason, [])
                if len(sample) < EXAMPLES_PER_RULE:
                    sample.append(doc.text[:EXAMPLE_CHARS])
    dropped = sum(rules.values())
    entry = {
        "name": "dedup",
        "input": n_in,
        "kept": n_in - dropped,
        "dropped": dropped,
        "rules": dict(rules),
        "modified": {},
    }
    return kept, entry, examples
