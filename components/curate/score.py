"""A per-document quality score from the margins by which a kept document clears curation's rules.

Every kept document passed every enabled quality rule; the score says *by how much*. Each rule's
statistic is turned into a margin in [0, 1]: 0 = exactly at the threshold (the worst a kept document
can be), 1 = as far from it as the rule can tell apart. The score is the mean margin over the enabled
rules, so it stays in [0, 1] and every rule weighs the same:

========================  ======================================  =======================================
rule (``curate.*`` key)   statistic                               margin
========================  ======================================  =======================================
``gopher_quality``        share of words with a letter or digit   ``(v - gopher_min_alpha_ratio) / (1 - t)``
``gopher_quality``        distinct Gopher stop words              ``v / gopher_min_stop_words - 1`` (full at 2×)
``gopher_repetition``     chars in the most repeated 2-gram       ``(t - v) / t``, ``t = gopher_top_ngram_max[0]``
``c4_quality``            share of characters C4's line rules     ``v`` (1.0 = no boilerplate line removed;
                          kept (``metadata["quality_score"]``)    the threshold is 0)
``fineweb_quality``       share of lines ending in punctuation    ``(v - fineweb_line_punct_ratio) / (1 - t)``
========================  ======================================  =======================================

The statistics are computed as datatrove's filters compute them (the same word tokenizer, stop words,
n-gram and punctuation definitions), clipped to [0, 1]. With no rule enabled every document scores 0.5
and a quality order is a seeded random one. The score is what ``continual.order=quality`` /
``pretrain.order=quality`` sort the training windows by (:mod:`components.training.data`).
"""

from __future__ import annotations

from collections.abc import Sequence

from datatrove.pipeline.filters.gopher_quality_filter import STOP_WORDS
from datatrove.pipeline.filters.gopher_repetition_filter import find_top_duplicate, get_n_grams
from datatrove.utils.text import PUNCTUATION_SET, split_into_words

from components.common.config import CurateConfig
from components.curate.quality import QUALITY_SCORE

# FineWeb's default "stop_chars" (datatrove FineWebQualityFilter): a line ending in one ends a sentence.
LINE_END = (".", "'", '"', "!", "?")
RULE = "mean of rule margins (components/curate/score.py)"


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def _floor_margin(value: float, threshold: float) -> float:
    """Margin of a ratio that must be at least ``threshold`` (its best is 1)."""
    return _clip((value - threshold) / (1.0 - threshold)) if threshold < 1 else float(value >= 1)


def rule_margins(text: str, metadata: dict, c: CurateConfig, tokenizer) -> dict[str, float]:
    """``{rule: margin in [0, 1]}`` of one kept document for the enabled rules (see the module table)."""
    margins: dict[str, float] = {}
    words = split_into_words(text, tokenizer)
    if c.gopher_quality and words:
        alpha = sum(any(ch.isalnum() for ch in w) for w in words) / len(words)
        margins["gopher_alpha"] = _floor_margin(alpha, c.gopher_min_alpha_ratio)
        stop = len({w.lower() for w in words} & set(STOP_WORDS))
        need = max(1, c.gopher_min_stop_words)
        margins["gopher_stop_words"] = _clip(stop / need - 1.0)
    if c.gopher_repetition and c.gopher_top_ngram_max and len(words) >= 2:
        bigrams = get_n_grams([w for w in words if any(ch not in PUNCTUATION_SET for ch in w)], 2)
        limit = float(c.gopher_top_ngram_max[0])
        share = find_top_duplicate(bigrams) / max(1, len(text)) if bigrams else 0.0
        margins["gopher_top_2gram"] = _clip((limit - share) / limit) if limit > 0 else 0.0
    if c.c4_quality and QUALITY_SCORE in metadata:
        margins["c4_kept_chars"] = _clip(float(metadata[QUALITY_SCORE]))
    if c.fineweb_quality:
        lines = [line for line in text.split("\n") if line.strip()]
        if lines:
            ended = sum(line.endswith(LINE_END) for line in lines) / len(lines)
            margins["fineweb_line_punct"] = _floor_margin(ended, c.fineweb_line_punct_ratio)
    return margins


def quality_scores(docs: Sequence, c: CurateConfig, tokenizer) -> list[float]:
    """The score of each document (a datatrove ``Document``): its mean rule margin, 0.5 with no rule."""
    scores = []
    for doc in docs:
        margins = rule_margins(doc.text, doc.metadata, c, tokenizer)
        scores.append(round(sum(margins.values()) / len(margins), 6) if margins else 0.5)
    return scores
