"""The CURATE stage: raw text files → validated, deduplicated, tokenized train/held-out shards.

``curate()`` streams every record of the source through a datatrove-shaped pipeline of small blocks::

    SourceReader ─▶ UnicodeNormalizer ─▶ LengthFilter ─▶ ExactDedupFilter      (bad input → quarantine)
        ─▶ split (hash of text + seed) ─▶ great-expectations suite ─▶ tokenizer ─▶ packed shards

and writes into ``out_dir``: ``manifest.json`` + ``tokenizer/`` + ``<split>/shard-*.bin`` (the
contract in :mod:`components.common.shards`), ``documents.jsonl.gz`` (lineage),
``quarantine/records.jsonl`` and ``validation.json``. Every step is counted; the counts go into the
manifest and, flattened, into the returned metrics (``dropped_too_short`` …) for MLflow.
"""

from __future__ import annotations

import time
from pathlib import Path

from components.common.artifacts import file_digest
from components.common.config import LifecycleConfig
from components.common.errors import DataError
from components.common.log import get_logger
from components.common.shards import token_dtype, write_manifest
from components.common.sources import resolve_source
from components.common.storage import ObjectStore
from components.curate.base import BaseFilter, BaseFormatter
from components.curate.dedup import ExactDedupFilter
from components.curate.filters import LengthFilter
from components.curate.normalize import UnicodeNormalizer
from components.curate.pack import pack_split, prepare_tokenizer
from components.curate.quarantine import CORRUPT_FILE, Quarantine
from components.curate.readers import REASONS, SourceReader
from components.curate.split import HELDOUT, TRAIN, assign_splits
from components.curate.validate import validate_documents
from components.curate.writers import DOCUMENTS, write_documents

log = get_logger(__name__)


def curate(
    cfg: LifecycleConfig,
    *,
    source: str,
    out_dir: Path,
    tokenizer_dir: Path | None = None,
    store: ObjectStore | None = None,
) -> dict:
    """Curate ``source`` into a dataset directory at ``out_dir``; return the run summary.

    ``tokenizer_dir`` (else ``cfg.tokenizer.path``) reuses a saved tokenizer instead of training one.
    Returns ``{"metrics": {name: number}, "counts": per-step counts, "source", "tokenizer_digest"}``.
    Raises :class:`DataError` for a missing source, an empty result, or a failed expectation.
    """
    started = time.perf_counter()
    c = cfg.curate
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    uris = resolve_source(source, store)
    steps: list[BaseFormatter | BaseFilter] = [
        UnicodeNormalizer(c.normalization),
        LengthFilter(c.min_chars, c.max_chars),
        ExactDedupFilter(),
    ]
    with Quarantine(out_dir) as quarantine:
        reader = SourceReader(c.text_field, quarantine, store)
        stream = reader.run(uris)
        for step in steps:
            stream = step.run(stream)
        docs = list(stream)
    if not docs:
        raise DataError(_empty_message(source, cfg, reader, quarantine, steps))

    splits = assign_splits(docs, c.heldout_fraction, cfg.run.seed)
    if c.expectations:
        validate_documents(docs, min_chars=c.min_chars, max_chars=c.max_chars, result_path=out_dir / "validation.json")
    write_documents(out_dir / DOCUMENTS, docs, splits)

    texts = {TRAIN: [], HELDOUT: []}
    for doc, split in zip(docs, splits, strict=True):
        texts[split].append(doc.text)
    tok = prepare_tokenizer(
        out_dir,
        texts[TRAIN],
        given=tokenizer_dir or cfg.tokenizer.path or None,
        vocab_size=cfg.tokenizer.vocab_size,
        min_frequency=cfg.tokenizer.min_frequency,
    )
    dtype = token_dtype(len(tok))
    packed = {
        split: pack_split(tok, split_texts, out_dir, split, dtype=dtype, shard_tokens=c.shard_tokens)
        for split, split_texts in texts.items()
    }
    digest = file_digest(out_dir / "tokenizer" / "tokenizer.json")
    counts = {
        "read": {"files": len(reader.files), "records": reader.records_read, "quarantined": dict(quarantine.counts)},
        **{step.name: step.stats.as_dict() for step in steps},
        "split": {split: len(split_texts) for split, split_texts in texts.items()},
    }
    write_manifest(
        out_dir, dtype=dtype, tokenizer_digest=digest, splits=packed, source=source, files=reader.files, counts=counts
    )
    metrics = _metrics(reader, quarantine, steps, packed, kept=len(docs))
    log.info(
        "curated %s: %d of %d records kept, %d train / %d held-out tokens in %.1f s",
        source,
        len(docs),
        reader.records_read,
        packed[TRAIN]["tokens"],
        packed[HELDOUT]["tokens"],
        time.perf_counter() - started,
    )
    return {"metrics": metrics, "counts": counts, "source": source, "tokenizer_digest": digest}


def _metrics(reader: SourceReader, quarantine: Quarantine, steps: list, packed: dict, *, kept: int) -> dict:
    """Flat ``{name: number}``; every known reason appears (0 if unused) so dashboards keep stable keys."""
    metrics: dict[str, int] = {
        "files": len(reader.files),
        "records_read": reader.records_read,
        "records_kept": kept,
        "quarantined": quarantine.records,
        **{f"quarantined_{r}": quarantine.counts.get(r, 0) for r in REASONS},
        **{f"quarantined_{r}": n for r, n in quarantine.counts.items()},
    }
    for step in steps:
        if isinstance(step, BaseFormatter):
            metrics[f"{step.name}_modified"] = step.stats.modified
        else:
            metrics.update({f"dropped_{r}": step.stats.dropped.get(r, 0) for r in step.reasons})
            metrics.update({f"dropped_{r}": n for r, n in step.stats.dropped.items()})
    for split in (TRAIN, HELDOUT):
        metrics[f"{split}_tokens"] = packed[split]["tokens"]
        metrics[f"{split}_documents"] = packed[split]["documents"]
    return metrics


def _empty_message(source: str, cfg: LifecycleConfig, reader: SourceReader, quarantine: Quarantine, steps: list) -> str:
    """Why nothing is left: the source, and the filter (or quarantine reason) that removed the most."""
    files = f"{len(reader.files)} file(s)"
    removals = [(n, "quarantine", r) for r, n in quarantine.counts.items() if r != CORRUPT_FILE]
    removals += [
        (n, step.name, r) for step in steps if isinstance(step, BaseFilter) for r, n in step.stats.dropped.items()
    ]
    if not removals:
        corrupt = quarantine.counts.get(CORRUPT_FILE, 0)
        detail = f"; {corrupt} of them corrupt (see {quarantine.path})" if corrupt else ""
        return f"{source}: no records found in {files}{detail}"
    n, step, reason = max(removals)
    hints = {
        "length": f"lower curate.min_chars (now {cfg.curate.min_chars}) or raise curate.max_chars (now {cfg.curate.max_chars})",
        "quarantine": f"the bad records are in {quarantine.path}; check the format and curate.text_field "
        f"(now {cfg.curate.text_field!r})",
    }
    return (
        f"{source}: no records left after curation ({reader.records_read} read from {files}); the filter that "
        f"removed the most was {step!r} ({reason}: {n}); {hints.get(step, 'check the input data')}"
    )
