"""Synthetic rephrasing: add LLM paraphrases of low-quality documents beside the originals.

After "Rephrasing the Web" (Maini et al., 2024): web text rephrased in a cleaner style (Wikipedia-like
prose, question/answer, …) and mixed with the real text trains faster than either alone. The step::

    eligible   = documents with metadata["quality_score"] < curate.rephrase_below (unscored: eligible)
    selected   = eligible, lowest score first, while their characters fit the mix budget
                 (curate.rephrase_mix_ratio × all original characters); rounds repeat while short
                 rewrites leave budget and eligible documents that fit it
    chunks     = each selected text cut at paragraph/sentence ends into ≤ curate.rephrase_chunk_chars
    rephrased  = chunks through the style's prompt template, in batches, by a Rephraser backend
                 (three all-failed batches in a row: the backend is taken to be down, the rest skipped)
    output     = every original document, each followed by its synthetic copy (if it succeeded and
                 still fits the budget)

A synthetic copy carries ``metadata["synthetic"] = True``, ``rephrase_style``, ``rephrase_model`` and
``source_id`` (the original's id), so lineage can count synthetic tokens and a split can keep a copy
with its source. A document whose rephrasing failed keeps only its original text and is counted.
"""

from __future__ import annotations

import copy
import os
import re
import textwrap
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from components.common.config import CurateConfig, LifecycleConfig
from components.common.errors import ConfigError
from components.common.log import get_logger, progress
from components.curate.document import Document, content_hash
from components.curate.rephrase_clients import HFRephraser, OpenAIRephraser, Rephraser

log = get_logger(__name__)

PROMPTS_DIR = Path(__file__).parent / "prompts"
STYLES = tuple(sorted(p.stem for p in PROMPTS_DIR.glob("*.txt")))
PLACEHOLDER = "{text}"
SCORE_KEY = "quality_score"
DOWN_AFTER = 3  # consecutive all-failed batches after which the backend is taken to be down


def rephrase_documents(
    docs: Sequence[Document], cfg: LifecycleConfig, *, client: Rephraser | None = None
) -> tuple[list[Document], dict]:
    """Originals plus synthetic copies of the selected documents, and the step's stats.

    ``client`` (else one built from ``cfg.curate``) does the rephrasing. Stats keys: enabled, style,
    backend, model, eligible, selected, chunks, rephrased, failed, over_budget, retries,
    original_chars, synthetic_chars, seconds. Raises :class:`ConfigError` for a bad ``rephrase_*`` knob.
    """
    c = cfg.curate
    stats = {"enabled": c.rephrase_enabled, "style": None, "backend": None, "model": None}
    stats.update(dict.fromkeys(("eligible", "selected", "chunks", "rephrased", "failed", "over_budget"), 0))
    stats.update(retries=0, original_chars=sum(len(d.text) for d in docs), synthetic_chars=0, seconds=0.0)
    if not c.rephrase_enabled or not docs:
        return list(docs), stats
    started = time.perf_counter()
    check_rephrase_config(c)
    template = load_template(c.rephrase_style)
    budget = c.rephrase_mix_ratio * stats["original_chars"]
    eligible = [i for i, d in enumerate(docs) if d.text.strip() and (_score(d) is None or _score(d) < c.rephrase_below)]
    # Lowest quality first: those gain most from a rewrite; unscored ones after all scored ones.
    eligible.sort(key=lambda i: (_score(docs[i]) is None, _score(docs[i]) or 0.0, i))
    client = client or make_rephraser(c)
    style = Path(c.rephrase_style).stem if c.rephrase_style not in STYLES else c.rephrase_style
    copies: dict[int, Document] = {}
    pending, down = eligible, False
    # Rounds: a round selects documents whose source text fits the remaining budget; rewrites come out
    # shorter than their sources more often than not, so the budget left is filled by later rounds.
    while pending and not down:
        room = budget - stats["synthetic_chars"]
        picked, planned, waiting = [], 0, []
        for i in pending:
            if planned + len(docs[i].text) <= room:
                picked.append(i)
                planned += len(docs[i].text)
            elif len(docs[i].text) <= room:  # too big only for what this round took: maybe next round
                waiting.append(i)
        if not picked:
            break
        pending = waiting
        outputs, down = _rephrase_chunks(client, template, docs, picked, c)
        stats["selected"] += len(picked)
        stats["chunks"] += sum(len(parts) for parts in outputs.values())
        for i in picked:
            parts = outputs.get(i)
            if not parts or any(p is None for p in parts):
                stats["failed"] += 1
                continue
            text = "\n\n".join(parts)
            if stats["synthetic_chars"] + len(text) > budget:  # a rewrite came out longer than its source
                stats["over_budget"] += 1
                continue
            copies[i] = synthetic_copy(docs[i], text, style=style, model=client.model)
            stats["synthetic_chars"] += len(text)
    out: list[Document] = []
    for i, doc in enumerate(docs):
        out.append(doc)
        if i in copies:
            out.append(copies[i])
    stats.update(
        style=style,
        backend=c.rephrase_backend,
        model=client.model,
        eligible=len(eligible),
        rephrased=len(copies),
        retries=client.retries,
        seconds=round(time.perf_counter() - started, 3),
    )
    log.info(
        "rephrase (%s): %d of %d eligible documents rephrased, %d failed, %d over budget; %d synthetic chars "
        "beside %d original (ratio cap %.2f), %d retries, %.1f s",
        style,
        stats["rephrased"],
        stats["eligible"],
        stats["failed"],
        stats["over_budget"],
        stats["synthetic_chars"],
        stats["original_chars"],
        c.rephrase_mix_ratio,
        stats["retries"],
        stats["seconds"],
    )
    return out, stats


def _rephrase_chunks(
    client: Rephraser, template: str, docs: Sequence[Document], picked: list[int], c: CurateConfig
) -> tuple[dict[int, list[str | None]], bool]:
    """Each picked document's chunk rewrites (``None`` = failed), and whether the backend looks down.

    After :data:`DOWN_AFTER` batches in a row without one success the rest is not sent (and so counts
    as failed): a dead endpoint must cost minutes of backoff, not hours.
    """
    chunks = [(i, piece) for i in picked for piece in split_chunks(docs[i].text, c.rephrase_chunk_chars)]
    outputs: dict[int, list[str | None]] = defaultdict(list)
    size, failed_in_a_row = c.rephrase_batch_size, 0
    batches = range(0, len(chunks), size)
    for start in progress(batches, desc="rephrase", total=len(batches), unit="batch"):
        batch = chunks[start : start + size]
        texts = client.complete([template.replace(PLACEHOLDER, piece) for _, piece in batch])
        for (i, _), text in zip(batch, texts, strict=True):
            outputs[i].append(text)
        failed_in_a_row = failed_in_a_row + 1 if all(t is None for t in texts) else 0
        if failed_in_a_row >= DOWN_AFTER:
            log.warning(
                "rephrase: %d batches in a row failed; the backend looks down, %d chunks left unsent",
                DOWN_AFTER,
                len(chunks) - start - len(batch),
            )
            for i, _ in chunks[start + len(batch) :]:
                outputs[i].append(None)
            return outputs, True
    return outputs, False


def synthetic_copy(doc: Document, text: str, *, style: str, model: str) -> Document:
    """``doc`` with the rephrased ``text``, a new id, and metadata saying where it came from."""
    new = copy.copy(doc)  # keeps the origin (file, line): a synthetic token still walks back to raw input
    new.text = text
    new.id = content_hash(text)
    inherited = {k: v for k, v in (doc.metadata or {}).items() if k != SCORE_KEY}  # the score was the source's
    new.metadata = {
        **inherited,
        "synthetic": True,
        "rephrase_style": style,
        "rephrase_model": model,
        "source_id": doc.id,
    }
    return new


def split_chunks(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut at paragraph, else sentence, else word ends.

    Hand-written: no dependency of the project splits text this way (LangChain's splitter would be a
    large dependency for twenty lines).
    """
    units: list[tuple[str, str]] = []  # (separator before the unit, unit)
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not paragraph:
            continue
        sep = "\n\n"
        for sentence in re.split(r"(?<=[.!?])\s+", paragraph) if len(paragraph) > limit else [paragraph]:
            for piece in textwrap.wrap(sentence, limit) if len(sentence) > limit else [sentence]:
                units.append((sep, piece))
                sep = " "
    chunks: list[str] = []
    for sep, unit in units:
        if chunks and len(chunks[-1]) + len(sep) + len(unit) <= limit:
            chunks[-1] += sep + unit
        else:
            chunks.append(unit)
    return chunks


def load_template(style: str) -> str:
    """The prompt template of a shipped style, or of a template file; it must hold ``{text}`` once."""
    path = PROMPTS_DIR / f"{style}.txt" if style in STYLES else Path(style)
    if not path.is_file():
        raise ConfigError(
            f"curate.rephrase_style: {style!r} is neither a shipped style ({', '.join(STYLES)}) nor a template file"
        )
    template = path.read_text(encoding="utf-8")
    if template.count(PLACEHOLDER) != 1:
        raise ConfigError(f"curate.rephrase_style: template {path} must contain {PLACEHOLDER} exactly once")
    return template


def make_rephraser(c: CurateConfig) -> Rephraser:
    """The backend ``c.rephrase_backend`` names, built from the ``rephrase_*`` knobs."""
    if c.rephrase_backend == "hf":
        if not (Path(c.rephrase_model) / "config.json").is_file():
            raise ConfigError(
                f"curate.rephrase_model: {c.rephrase_model!r} is not a local Hugging Face model directory "
                "(no config.json); the hf backend needs a path, e.g. one written by save_pretrained"
            )
        return HFRephraser(c.rephrase_model, max_new_tokens=c.rephrase_max_new_tokens)
    if not c.rephrase_endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"curate.rephrase_endpoint: must be an http(s):// URL, got {c.rephrase_endpoint!r}")
    if not c.rephrase_model:
        raise ConfigError("curate.rephrase_model: name the served model (vLLM's --served-model-name)")
    return OpenAIRephraser(
        c.rephrase_endpoint,
        c.rephrase_model,
        api_key=os.environ.get(c.rephrase_api_key_env) if c.rephrase_api_key_env else None,
        max_new_tokens=c.rephrase_max_new_tokens,
        max_retries=c.rephrase_max_retries,
        backoff_seconds=c.rephrase_backoff_seconds,
        timeout_seconds=c.rephrase_timeout_seconds,
    )


def check_rephrase_config(c: CurateConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad ``curate.rephrase_*`` knob (call early in a run)."""
    checks = [
        (c.rephrase_backend in {"openai", "hf"}, "rephrase_backend", "must be 'openai' or 'hf'"),
        (c.rephrase_mix_ratio > 0, "rephrase_mix_ratio", "must be > 0 (synthetic chars per original char)"),
        (c.rephrase_batch_size >= 1, "rephrase_batch_size", "must be >= 1"),
        (c.rephrase_max_retries >= 0, "rephrase_max_retries", "must be >= 0"),
        (c.rephrase_backoff_seconds >= 0, "rephrase_backoff_seconds", "must be >= 0"),
        (c.rephrase_timeout_seconds > 0, "rephrase_timeout_seconds", "must be > 0"),
        (c.rephrase_max_new_tokens >= 1, "rephrase_max_new_tokens", "must be >= 1"),
        (c.rephrase_chunk_chars >= 64, "rephrase_chunk_chars", "must be >= 64 (a chunk is a paragraph or more)"),
    ]
    for ok, key, message in checks:
        if not ok:
            raise ConfigError(f"curate.{key}: {message}, got {getattr(c, key)!r}")
    load_template(c.rephrase_style)


def _score(doc: Document) -> float | None:
    score = (getattr(doc, "metadata", None) or {}).get(SCORE_KEY)
    return None if score is None else float(score)
