"""Decontamination: drop training documents that share a long word n-gram with an evaluation set.

The filter is datatrove's :class:`~datatrove.pipeline.decont.n_grams.NGramsDecontFilter` (reason
``contaminated``, per-task counts ``contaminated_<task>``). Its index builder,
``NGramsDecontIndexer``, loads tasks through lighteval from the Hugging Face hub; lmforge's evaluation
sets are local files, so :func:`build_index` writes the same index (one ``<task>.index.hashes`` array
of uint64 n-gram hashes per set) with the same normalization, tokenizer and hash. Each record
contributes the n-grams of its query (prompt/context), of its gold answer, and of the span joining
them (``find_query_ngrams`` and ``find_overlap_ngrams`` in datatrove's terms): pretraining text that
holds a benchmark question alone is already contamination.

Shipped sets: every ``*.jsonl`` under ``components/evaluate/tasks/`` and the quick-start GSM8K file.
A record is read as ``{"context", "choices", "label"}`` (cloze/multiple choice), ``{"question",
"answer"}`` (GSM8K) or ``{"text"}``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter
from datatrove.utils.hashing import create_hash_func
from datatrove.utils.text import ngrams, simplify_text

from components.common.errors import ConfigError
from components.curate.dedup import HASH

REPO = Path(__file__).resolve().parents[2]
SHIPPED = (
    *sorted((REPO / "components" / "evaluate" / "tasks").glob("*.jsonl")),
    *sorted((REPO / "pipelines" / "data" / "quickstart").glob("gsm8k*.jsonl")),
)


def eval_pairs(path: Path) -> list[tuple[str | None, str]]:
    """``(query, gold)`` of every record in an evaluation JSONL file."""
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if "choices" in rec and "label" in rec:
            pairs.append((rec.get("context"), rec["choices"][int(rec["label"])]))
        elif "question" in rec and "answer" in rec:
            pairs.append((rec["question"], rec["answer"]))
        elif "text" in rec:
            pairs.append((None, rec["text"]))
        else:
            raise ConfigError(f"{path}:{n}: an evaluation record needs context/choices/label, question/answer or text")
    return pairs


def ngram_hashes(query: str | None, gold: str, config: NGramsDecontConfig, tokenizer) -> list[int]:
    """The n-gram hashes of one record, exactly as ``NGramsDecontIndexer.compute_hashes`` makes them."""
    n = config.n_grams
    hash_func = create_hash_func(config.hash_config)
    gold_tokens = tokenizer.word_tokenize(simplify_text(gold, config.norm_config))
    grams = list(ngrams(gold_tokens, n))
    if query:
        query_tokens = tokenizer.word_tokenize(simplify_text(query, config.norm_config))
        grams.extend(ngrams(query_tokens, n))
        grams.extend(
            query_tokens[-n + 1 + i :] + gold_tokens[: i + 1]
            for i in range(n - 1)
            if len(query_tokens) >= n - 1 - i and len(gold_tokens) >= i + 1
        )
    return [hash_func(" ".join(g)) for g in grams]


def build_index(index_dir: Path, extra_paths: list[str], n_grams: int, tokenizer) -> NGramsDecontConfig:
    """Write ``<task>.index.hashes`` for the shipped and ``extra_paths`` sets; return the config to filter with."""
    config = NGramsDecontConfig(n_grams=n_grams, find_query_ngrams=True, find_overlap_ngrams=True, hash_config=HASH)
    index_dir.mkdir(parents=True, exist_ok=True)
    for path in (*SHIPPED, *(Path(p) for p in extra_paths)):
        if not path.is_file():
            raise ConfigError(f"curate.decontaminate_paths: {path} is not a file")
        stat = path.stat()
        hashes = _task_hashes(str(path), stat.st_mtime_ns, stat.st_size, n_grams, tokenizer)
        hashes.tofile(index_dir / f"{path.name.removesuffix('.jsonl')}.index.hashes")
    return config


@functools.lru_cache(maxsize=16)
def _task_hashes(path: str, _mtime_ns: int, _size: int, n_grams: int, tokenizer) -> np.ndarray:
    # Cached per file version: the shipped sets are hashed once per process, not once per curate run.
    config = NGramsDecontConfig(n_grams=n_grams, find_query_ngrams=True, find_overlap_ngrams=True, hash_config=HASH)
    hashes = {h for q, g in eval_pairs(Path(path)) for h in ngram_hashes(q, g, config, tokenizer)}
    return np.array(sorted(hashes), dtype=config.hash_config.np_descr)


def decontamination_filter(index_dir: Path, config: NGramsDecontConfig, tokenizer, exclusion_writer):
    f = NGramsDecontFilter(
        index_folder=str(index_dir), config=config, exclusion_writer=exclusion_writer, language=tokenizer
    )
    f.name = "decontaminate"
    return f
