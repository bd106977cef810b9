"""Quality heuristics: datatrove's Gopher, C4 and FineWeb filters, configured from ``curate.*``.

The rules are datatrove's, unchanged (their drop reasons, e.g. ``gopher_short_doc``, ``top_2_gram``,
``too_few_sentences``, ``line_punct_ratio``, become the report's per-rule counts). lmforge chooses the
thresholds (the papers' values by default, see :class:`~components.common.config.CurateConfig`) and
gives every block the shared offline word tokenizer (:mod:`components.curate.words`).

:class:`C4Quality` adds one thing to datatrove's C4 filter: C4's line rules delete boilerplate lines
(no terminal punctuation, "javascript", cookie notices) from documents they keep, and the fraction of
characters that survived is a cheap quality signal. It is stored as ``metadata["quality_score"]``
(1.0 = nothing removed), which selects the documents the optional rephrasing step rewrites.
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)

from components.common.config import CurateConfig

QUALITY_SCORE = "quality_score"


class C4Quality(C4QualityFilter):
    name = "c4_quality"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        before = len(doc.text)
        verdict = super().filter(doc)
        if verdict is True:
            if len(doc.text) != before:
                self.stat_update("modified")
            doc.metadata[QUALITY_SCORE] = round(len(doc.text) / before, 4) if before else 0.0
        return verdict


def quality_filters(c: CurateConfig, tokenizer, sink) -> list[tuple[str, object]]:
    """``[(report name, datatrove filter)]`` for the enabled rule sets; ``sink(name)`` makes the exclusion writer."""
    steps: list[tuple[str, object]] = []
    if c.gopher_quality:
        steps.append(
            (
                "gopher_quality",
                GopherQualityFilter(
                    min_doc_words=c.gopher_min_words,
                    max_doc_words=c.gopher_max_words,
                    min_stop_words=c.gopher_min_stop_words,
                    max_non_alpha_words_ratio=c.gopher_min_alpha_ratio,
                    exclusion_writer=sink("gopher_quality"),
                    language=tokenizer,
                ),
            )
        )
    if c.gopher_repetition:
        top = tuple(zip((2, 3, 4), (float(x) for x in c.gopher_top_ngram_max), strict=False))
        steps.append(
            (
                "gopher_repetition",
                GopherRepetitionFilter(top_n_grams=top, exclusion_writer=sink("gopher_repetition"), language=tokenizer),
            )
        )
    if c.c4_quality:
        steps.append(
            (
                "c4_quality",
                C4Quality(
                    exclusion_writer=sink("c4_quality"),
                    filter_no_terminal_punct=c.c4_terminal_punct,
                    min_num_sentences=c.c4_min_sentences,
                    min_words_per_line=c.c4_min_words_per_line,
                    language=tokenizer,
                ),
            )
        )
    if c.fineweb_quality:
        steps.append(
            (
                "fineweb_quality",
                FineWebQualityFilter(
                    exclusion_writer=sink("fineweb_quality"),
                    line_punct_thr=c.fineweb_line_punct_ratio,
                    short_line_thr=c.fineweb_short_line_ratio,
                    language=tokenizer,
                ),
            )
        )
    return steps
