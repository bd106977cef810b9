"""The CURATE stage: raw text files → validated, deduplicated, tokenized, shuffled train/held-out shards.

``curate()`` runs the datatrove pipeline of :mod:`components.curate.pipeline` on the configured
executor (``curate.executor``: local or Ray; same blocks, same output)::

    per-document stage (read … decontaminate, MinHash signatures)  ─▶ MinHash buckets ─▶ clusters
      ─▶ dedup (near + exact, incremental vs curate.dedup_previous)  ─▶ [rephrase hook]
      ─▶ split (hash of text + seed) ─▶ great-expectations suite ─▶ tokenizer ─▶ shuffled packed shards

and writes into ``out_dir``: ``manifest.json`` + ``tokenizer/`` + ``<split>/shard-*.bin`` (the
contract in :mod:`components.common.shards`; each shard lists its input files), ``documents.jsonl.gz``
(lineage, in packing order), ``quarantine/records.jsonl``, ``validation.json`` + ``validation_docs/``
(GX data docs), ``curation_report.json`` and ``data_card.html``,
``train/quality.npz`` (each train document's quality score, :mod:`components.curate.score`, for
curriculum ordering), ``dedup/`` (the index the next incremental run compares against) and ``datatrove/`` (task logs and
stats). Every step is counted per rule; the counts go into the report and, flattened, into the
returned metrics (``dropped_too_short`` …) for MLflow.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path

from components.common.artifacts import file_digest
from components.common.config import LifecycleConfig, to_dict
from components.common.errors import DataError
from components.common.log import get_logger, report_progress
from components.common.shards import token_dtype, write_manifest, write_quality
from components.common.sources import resolve_source
from components.common.storage import ObjectStore
from components.curate import report as rpt
from components.curate.base import merge_examples
from components.curate.dedup import (
    INDEX_DIR,
    DedupDecisions,
    carry_previous,
    dedup_documents,
    minhash_config,
    minhash_params,
    save_index,
)
from components.curate.executor import run_pipeline
from components.curate.pack import pack_split, prepare_tokenizer
from components.curate.pipeline import (
    CLUSTERS,
    DOCS,
    EXAMPLES,
    SIGNATURES,
    bucket_pipeline,
    check_curate_config,
    cluster_pipeline,
    document_steps,
    map_pipeline,
)
from components.curate.quarantine import CORRUPT_FILE, merge_quarantine
from components.curate.rephrase import check_rephrase_config
from components.curate.score import RULE, quality_scores
from components.curate.select import select_subset
from components.curate.split import HELDOUT, TRAIN, assign_splits
from components.curate.validate import validate_documents
from components.curate.words import RegexWordTokenizer
from components.curate.writers import DOCUMENTS, write_documents

log = get_logger(__name__)
REPORT = "curation_report.json"


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
    Returns ``{"metrics": {name: number}, "counts": per-step report entries, "source",
    "tokenizer_digest", "report": path of curation_report.json, "data_card": path of data_card.html}``.
    Raises :class:`DataError` for a missing source, an empty result, or a failed expectation, and
    :class:`ConfigError` for a bad ``curate.*`` knob.
    """
    started = time.perf_counter()
    c = cfg.curate
    check_curate_config(cfg)
    check_rephrase_config(c)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    uris = resolve_source(source, store)
    work = out_dir / "work"
    for stale in (work, out_dir / INDEX_DIR):
        shutil.rmtree(stale, ignore_errors=True)

    # 1. Per-document stage, then MinHash buckets and clusters, on the configured executor.
    params = minhash_params(cfg)
    previous = carry_previous(c.dedup_previous, out_dir, params)
    minhash = minhash_config(params) if c.near_dedup else None
    tokenizer = RegexWordTokenizer()
    steps = document_steps(cfg, uris=uris, work=work, store=store, tokenizer=tokenizer)
    tasks = min(c.tasks, len(uris))
    report_progress(stage="curate", files=len(uris), phase="filtering")
    execute = {"workers": c.workers, "executor": c.executor, "ray_address": c.ray_address}
    logs = out_dir / "datatrove"
    stats = run_pipeline(
        map_pipeline(steps, work=work, minhash=minhash, tokenizer=tokenizer),
        logging_dir=logs / "documents",
        tasks=tasks,
        **execute,
    )
    if minhash is not None and (work / SIGNATURES).is_dir():
        index_name = f"run-{uuid.uuid4().hex[:12]}"  # unique: a run must never mistake the carried index for its own
        bucket = bucket_pipeline(work=work, index_dir=out_dir / INDEX_DIR, index_name=index_name, minhash=minhash)
        run_pipeline(bucket, logging_dir=logs / "buckets", tasks=c.minhash_bands, **execute)
        run_pipeline(cluster_pipeline(work=work, minhash=minhash), logging_dir=logs / "clusters", tasks=1, **execute)

    # 2. Gather the tasks' side outputs: inputs, quarantine, per-step counts, examples.
    order = {u: i for i, u in enumerate(uris)}
    files = sorted(
        (f for r in range(tasks) for f in json.loads((work / "inputs" / f"{r:05d}.json").read_text())),
        key=lambda f: order[f["uri"]],
    )
    parts = [work / "quarantine" / f"{r:05d}.jsonl" for r in range(tasks)]
    quarantine_path = merge_quarantine(out_dir, parts)
    quarantine_counts = dict(Counter(json.loads(line)["reason"] for line in quarantine_path.read_text().splitlines()))
    named = [name for name, _ in steps[1:]]
    step_list = [rpt.read_entry(files, quarantine_counts), *rpt.step_entries(named, stats[1 : len(steps)])]
    examples = merge_examples(work / EXAMPLES)

    # 3. Dedup decisions (near, exact, previous run) over everything that survived the filters.
    decisions = DedupDecisions(work / CLUSTERS if minhash is not None else None)
    docs, dedup_entry, dedup_examples = dedup_documents(work / DOCS, tasks, decisions, previous)
    step_list.append(dedup_entry)
    examples.update(dedup_examples)
    report_progress(stage="curate", docs=f"{len(docs)}/{step_list[0]['input']}", phase="tokenizing")
    if not docs:
        raise DataError(rpt.empty_message(source, cfg, step_list, files, quarantine_path))
    originals = docs

    # ---- REPHRASE HOOK: low-quality documents (metadata["quality_score"], set by the C4 step) are
    # routed to the optional LLM rephrasing step, which returns the originals plus synthetic copies.
    synthetic = {"documents": 0, "tokens": 0, "style": None}
    if c.rephrase_enabled:
        docs = _rephrase(docs, cfg, steps)
        synthetic["style"] = next((d.metadata.get("rephrase_style") for d in docs if d.metadata.get("synthetic")), None)
        synthetic["documents"] = sum(1 for d in docs if d.metadata.get("synthetic"))

    # 4. Split, validate, shuffle, tokenize, pack.
    splits = _splits(docs, c.heldout_fraction, cfg.run.seed)
    if c.expectations:
        validate_documents(
            docs,
            min_chars=c.min_chars,
            max_chars=c.max_chars,
            result_path=out_dir / "validation.json",
            languages=c.languages,
            pii=dict(steps).get("pii"),
            docs_dir=out_dir / "validation_docs",
        )
    by_split = {TRAIN: [], HELDOUT: []}
    for doc, split in zip(docs, splits, strict=True):
        by_split[split].append(doc)
    selection = None
    if c.select_fraction < 1.0:  # an informative subset of the train split (held-out stays whole)
        keep, selection = select_subset(
            [d.text for d in by_split[TRAIN]],
            fraction=c.select_fraction,
            method=c.select_method,
            partition=c.select_partition,
            seed=cfg.run.seed,
        )
        by_split[TRAIN] = [by_split[TRAIN][i] for i in keep]
        log.info("selected %d of %d training documents (%s)", len(keep), selection["candidates"], c.select_method)
    for split, split_docs in by_split.items():
        # Documents from one file must not sit together in the packed stream. One generator per split,
        # seeded by (seed, split name): with a single shared one, the held-out order (and so the text an
        # evaluation's held-out token prefix reads) would depend on how many train documents were
        # shuffled first, and subsets of different sizes would be scored on different held-out text.
        _split_rng(cfg.run.seed, split).shuffle(split_docs)
    ordered = [d for split in (TRAIN, HELDOUT) for d in by_split[split]]
    write_documents(out_dir / DOCUMENTS, ordered, [s for s in (TRAIN, HELDOUT) for _ in by_split[s]])
    tok = prepare_tokenizer(
        out_dir,
        [d.text for d in by_split[TRAIN]],
        given=tokenizer_dir or cfg.tokenizer.path or None,
        vocab_size=cfg.tokenizer.vocab_size,
        min_frequency=cfg.tokenizer.min_frequency,
    )
    dtype = token_dtype(len(tok))
    packed = {
        split: pack_split(
            tok,
            [d.text for d in split_docs],
            out_dir,
            split,
            dtype=dtype,
            shard_tokens=c.shard_tokens,
            origins=[d.file for d in split_docs],
            synthetic=[bool(d.metadata.get("synthetic")) for d in split_docs],
        )
        for split, split_docs in by_split.items()
    }
    synthetic["tokens"] = sum(p.pop("synthetic_tokens") for p in packed.values())
    doc_tokens = {split: p.pop("doc_tokens") for split, p in packed.items()}
    if c.quality_scores:  # each train document's score, in packing order, for curriculum ordering
        packed[TRAIN]["quality"] = write_quality(
            out_dir, TRAIN, doc_tokens[TRAIN], quality_scores(by_split[TRAIN], c, tokenizer), RULE
        )
    save_index(out_dir, params, previous, [d.id for d in originals])

    # 5. Report, manifest (with lineage), data card.
    report = {
        "source": source,
        "inputs": files,
        "steps": step_list,
        "examples": examples,
        "languages": dict(Counter(d.metadata.get("language", "unknown") for d in originals).most_common()),
        "lengths": rpt.sampled_lengths([d.text for d in docs], cfg.run.seed),
        "dedup_clusters": decisions.cluster_sizes(),
        "synthetic": synthetic,
        "selection": selection,
        "quality": packed[TRAIN].get("quality"),
        "tokens": {split: p["tokens"] for split, p in packed.items()},
        "quarantined": sum(n for r, n in quarantine_counts.items() if r != CORRUPT_FILE),
        "quarantine_counts": quarantine_counts,
        "shards": [
            {"path": s["path"], "split": split, "tokens": s["tokens"], "inputs": s["inputs"]}
            for split, p in packed.items()
            for s in p["shards"]
        ],
        "executor": c.executor,
        "config": to_dict(c),
    }
    report_path = out_dir / REPORT
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    digest = file_digest(out_dir / "tokenizer" / "tokenizer.json")
    write_manifest(
        out_dir,
        dtype=dtype,
        tokenizer_digest=digest,
        splits=packed,
        source=source,
        files=files,
        counts=step_list,
        curation={
            "config": report["config"],
            "report": REPORT,
            "synthetic": synthetic,
            "selection": selection,
            "quality": {"rule": RULE, "file": packed[TRAIN]["quality"]["path"]} if c.quality_scores else None,
        },
    )
    shutil.rmtree(work, ignore_errors=True)  # intermediate documents; the kept ones are in documents.jsonl.gz
    card = _data_card(report, out_dir)
    metrics = rpt.metrics(report, packed)
    log.info(
        "curated %s: %d of %d records kept, %d train / %d held-out tokens in %.1f s",
        source,
        metrics["records_kept"],
        metrics["records_read"],
        packed[TRAIN]["tokens"],
        packed[HELDOUT]["tokens"],
        time.perf_counter() - started,
    )
    return {
        "metrics": metrics,
        "counts": step_list,
        "source": source,
        "tokenizer_digest": digest,
        "report": str(report_path),
        "data_card": str(card),
    }


def _rephrase(docs: list, cfg: LifecycleConfig, steps: list) -> list:
    """Originals plus synthetic copies (components/curate/rephrase.py). A copy comes from a model after
    the filters ran, so it gets the same normalization and PII redaction, must fit the length bounds,
    and must not repeat a text already kept; copies that fail are left out."""
    from components.curate.document import content_hash
    from components.curate.rephrase import rephrase_documents

    out, _ = rephrase_documents(docs, cfg)
    formatters = [step for name, step in steps if name in ("normalize", "pii")]
    seen = {d.id for d in docs}
    kept = []
    for doc in out:
        if doc.metadata.get("synthetic"):
            for step in formatters:
                doc.text = step.format(doc.text)
            doc.id = content_hash(doc.text)
            if not cfg.curate.min_chars <= len(doc.text) <= cfg.curate.max_chars or doc.id in seen:
                continue
            seen.add(doc.id)
        kept.append(doc)
    return kept


def _split_rng(seed: int, split: str) -> random.Random:
    """A generator for one split's shuffle, independent of every other split's (seeded by a digest, so
    it is the same in every process whatever ``PYTHONHASHSEED`` is)."""
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}/{split}".encode()).digest()[:8], "big"))


def _splits(docs: list, fraction: float, seed: int) -> list[str]:
    """Split by each original's text hash; a synthetic copy goes where its source went (no leak)."""
    originals = [d for d in docs if not d.metadata.get("synthetic")]
    by_id = dict(zip((d.id for d in originals), assign_splits(originals, fraction, seed), strict=True))
    return [by_id[d.metadata.get("source_id", d.id)] if d.metadata.get("synthetic") else by_id[d.id] for d in docs]


def _data_card(report: dict, out_dir: Path) -> Path:
    """``data_card.html`` (components/curate/datacard.py): the report as one page for the Kubeflow UI."""
    from components.curate.datacard import render_data_card

    return render_data_card(report, out_dir)
