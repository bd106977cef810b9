"""The curation pipeline as datatrove blocks, built from ``cfg.curate``: one definition, any executor.

Per-document stage (``curate.tasks`` tasks; every block counts its own drops per reason)::

    read ─▶ repair (ftfy) ─▶ normalize ─▶ length ─▶ language (lingua) ─▶ gopher_quality
         ─▶ gopher_repetition ─▶ c4_quality ─▶ fineweb_quality ─▶ toxicity ─▶ pii ─▶ decontaminate
         ─▶ [JsonlWriter: work/docs/<rank>.jsonl] ─▶ [MinhashDedupSignature]

then, when ``curate.near_dedup``, ``MinhashDedupBuckets`` (one task per band, matching the carried
index too) and ``MinhashDedupCluster`` (one task). Each named step is optional (a knob turns it off)
except reading, normalization and the length bounds. Every filter gets an :class:`ExampleSink`, so the
data card can show what each rule removed.
"""

from __future__ import annotations

from pathlib import Path

from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupSignature
from datatrove.pipeline.writers import JsonlWriter

from components.common.config import LifecycleConfig
from components.common.errors import ConfigError
from components.curate.base import ExampleSink
from components.curate.decontaminate import build_index, decontamination_filter
from components.curate.filters import DEFAULT_WORDLIST, LengthFilter, WordListFilter, load_wordlist
from components.curate.language import LinguaLanguageFilter
from components.curate.normalize import TextRepair, UnicodeNormalizer
from components.curate.pii import PIIRedactor
from components.curate.quality import quality_filters
from components.curate.readers import SourceReaderStep
from components.curate.words import RegexWordTokenizer

DOCS, SIGNATURES, BUCKETS, CLUSTERS, EXAMPLES = "docs", "signatures", "buckets", "clusters", "examples"


def check_curate_config(cfg: LifecycleConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad pipeline knob (before any work starts)."""
    c = cfg.curate
    checks = [
        (c.tasks >= 1, "tasks", "must be >= 1"),
        (c.workers == -1 or c.workers >= 1, "workers", "must be >= 1 or -1 (all tasks at once)"),
        (0.0 <= c.language_threshold <= 1.0, "language_threshold", "must be in [0, 1]"),
        (c.language_chars >= 16, "language_chars", "must be >= 16"),
        (c.minhash_ngrams >= 1, "minhash_ngrams", "must be >= 1"),
        (c.minhash_bands >= 1 and c.minhash_rows >= 1, "minhash_bands", "bands and rows must be >= 1"),
        (c.decontaminate_ngrams >= 3, "decontaminate_ngrams", "must be >= 3 (short n-grams match everything)"),
        (len(c.gopher_top_ngram_max) <= 3, "gopher_top_ngram_max", "has one fraction each for 2-, 3- and 4-grams"),
    ]
    for ok, key, message in checks:
        if not ok:
            raise ConfigError(f"curate.{key}: {message}, got {getattr(c, key)!r}")
    wordlist = c.toxicity_wordlist
    if wordlist not in ("default", "none") and not Path(wordlist).is_file():
        raise ConfigError(f"curate.toxicity_wordlist: {wordlist!r} is not a file (or 'default' / 'none')")


def document_steps(
    cfg: LifecycleConfig, *, uris: list[str], work: Path, store=None, tokenizer: RegexWordTokenizer | None = None
) -> list[tuple[str, object]]:
    """``[(report name, block)]`` of the per-document stage, reader first, in order."""
    c = cfg.curate
    tokenizer = tokenizer or RegexWordTokenizer()

    def sink(name: str) -> ExampleSink:
        return ExampleSink(work / EXAMPLES, name)

    steps: list[tuple[str, object]] = [("read", SourceReaderStep(uris, c.text_field, work, store))]
    if c.repair:
        steps.append(("repair", TextRepair()))
    steps.append(("normalize", UnicodeNormalizer(c.normalization)))
    steps.append(("length", LengthFilter(c.min_chars, c.max_chars, exclusion_writer=sink("length"))))
    if c.languages:
        steps.append(
            (
                "language",
                LinguaLanguageFilter(
                    c.languages,
                    c.language_candidates,
                    threshold=c.language_threshold,
                    max_chars=c.language_chars,
                    exclusion_writer=sink("language"),
                ),
            )
        )
    steps.extend(quality_filters(c, tokenizer, sink))
    if c.toxicity_wordlist != "none":
        path = DEFAULT_WORDLIST if c.toxicity_wordlist == "default" else Path(c.toxicity_wordlist)
        steps.append(
            (
                "toxicity",
                WordListFilter(load_wordlist(path), max_hits=c.toxicity_max_hits, exclusion_writer=sink("toxicity")),
            )
        )
    if c.pii:
        steps.append(("pii", PIIRedactor(only_public_ips=c.pii_public_ips_only)))
    if c.decontaminate:
        config = build_index(work / "decontamination_index", c.decontaminate_paths, c.decontaminate_ngrams, tokenizer)
        steps.append(
            (
                "decontaminate",
                decontamination_filter(work / "decontamination_index", config, tokenizer, sink("decontaminate")),
            )
        )
    return steps


def map_pipeline(steps: list[tuple[str, object]], *, work: Path, minhash, tokenizer) -> list:
    """The per-document blocks followed by the intermediate writer and (if ``minhash``) the signature stage."""
    pipeline = [step for _, step in steps]
    pipeline.append(JsonlWriter(str(work / DOCS), output_filename="${rank}.jsonl", compression=None))
    if minhash is not None:
        pipeline.append(MinhashDedupSignature(output_folder=str(work / SIGNATURES), config=minhash, language=tokenizer))
    return pipeline


def bucket_pipeline(*, work: Path, index_dir: Path, index_name: str, minhash) -> list:
    index_dir.mkdir(parents=True, exist_ok=True)
    return [
        MinhashDedupBuckets(
            input_folder=str(work / SIGNATURES),
            output_folder=str(work / BUCKETS),
            index_folder=str(index_dir),
            config=minhash,
            only_dedup_in_index=False,
            create_index_name=index_name,
        )
    ]


def cluster_pipeline(*, work: Path, minhash) -> list:
    return [
        MinhashDedupCluster(
            input_folder=str(work / BUCKETS), output_folder=str(work / CLUSTERS), config=minhash, save_cluster_id=True
        )
    ]
