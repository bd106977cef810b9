"""The per-document quality score: the mean margin by which a kept document clears the enabled rules."""

from components.common.config import load_config
from components.curate.document import Document
from components.curate.quality import QUALITY_SCORE
from components.curate.score import quality_scores, rule_margins
from components.curate.words import RegexWordTokenizer

from .test_quality import PROSE

# Kept by the rules but only just: few stop words, lines without terminal punctuation.
TERSE = "\n".join(["harbour nets weather gull wall interest", "sun hills town school baker shop smile."] * 4)


def cfg(tmp_path, *overrides):
    return load_config("tiny", [f"run.home={tmp_path}", *overrides]).curate


def test_every_margin_is_between_zero_and_one(tmp_path):
    margins = rule_margins(TERSE, {QUALITY_SCORE: 0.7}, cfg(tmp_path), RegexWordTokenizer())
    assert set(margins) == {
        "gopher_alpha",
        "gopher_stop_words",
        "gopher_top_2gram",
        "c4_kept_chars",
        "fineweb_line_punct",
    }
    assert all(0.0 <= m <= 1.0 for m in margins.values())


def test_clean_prose_scores_above_terse_fragments(tmp_path):
    docs = [
        Document(PROSE, "mem", 1, metadata={QUALITY_SCORE: 1.0}),
        Document(TERSE, "mem", 2, metadata={QUALITY_SCORE: 0.7}),
    ]
    prose, terse = quality_scores(docs, cfg(tmp_path), RegexWordTokenizer())
    assert prose > terse


def test_disabled_rules_contribute_no_margin(tmp_path):
    off = ["curate.gopher_quality=false", "curate.gopher_repetition=false", "curate.fineweb_quality=false"]
    margins = rule_margins(PROSE, {QUALITY_SCORE: 0.9}, cfg(tmp_path, *off), RegexWordTokenizer())
    assert margins == {"c4_kept_chars": 0.9}


def test_no_rule_enabled_scores_every_document_one_half(tmp_path):
    off = [f"curate.{r}=false" for r in ("gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality")]
    assert quality_scores([Document(PROSE, "mem", 1)], cfg(tmp_path, *off), RegexWordTokenizer()) == [0.5]
