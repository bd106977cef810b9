import unicodedata

from components.curate.base import step_counts
from components.curate.document import Document
from components.curate.normalize import TextRepair, UnicodeNormalizer


def test_nfc_composes_decomposed_accents():
    assert UnicodeNormalizer("NFC").format("Cafe\u0301") == "Caf\u00e9"


def test_nfkc_folds_compatibility_characters():
    assert UnicodeNormalizer("NFKC").format("\ufb01ne \u2460") == "fine 1"


def test_control_characters_are_stripped_but_newline_and_tab_kept():
    text = "a\x00b\x07c\x1bd\x7fe\x85f\tg\nh"
    assert UnicodeNormalizer("NFC").format(text) == "abcdef\tg\nh"


def test_crlf_line_ends_become_lf():
    assert UnicodeNormalizer("NFC").format("one\r\ntwo\r\n") == "one\ntwo\n"


def test_none_form_keeps_spelling_and_still_strips_controls():
    out = UnicodeNormalizer("none").format("Cafe\u0301\x01")
    assert out == "Cafe\u0301" and not unicodedata.is_normalized("NFC", out)


def test_run_counts_modified_documents_and_drops_none():
    step = UnicodeNormalizer("NFC")
    docs = [Document("plain text", "f", 1), Document("bell\x07", "f", 3)]
    out = list(step.run(docs))
    assert [d.text for d in out] == ["plain text", "bell"]
    assert step_counts(step, drops=False) == {"input": 2, "kept": 2, "dropped": 0, "rules": {}, "modified": {"all": 1}}


def test_ftfy_repairs_mojibake_and_html_entities():
    repair = TextRepair()
    assert repair.format("The cafÃ© is closed") == "The café is closed"
    assert repair.format("Fish &amp; chips") == "Fish & chips"


def test_ftfy_keeps_curly_quotes_and_clean_text():
    repair = TextRepair()
    out = list(repair.run([Document("\u201cQuoted,\u201d she said.", "f", 1)]))
    assert out[0].text == "\u201cQuoted,\u201d she said." and step_counts(repair, drops=False)["modified"] == {}
