from components.curate.document import Document
from components.curate.filters import LengthFilter


def doc(text: str) -> Document:
    return Document(text, "mem", 1)


def test_rejects_doc_below_min_chars_as_too_short():
    assert LengthFilter(min_chars=5).filter(doc("abcd")) == (False, "too_short")


def test_rejects_doc_above_max_chars_as_too_long():
    assert LengthFilter(max_chars=5).filter(doc("abcdef")) == (False, "too_long")


def test_keeps_doc_at_both_bounds():
    f = LengthFilter(min_chars=3, max_chars=5)
    assert f.filter(doc("abc")) is True and f.filter(doc("abcde")) is True


def test_none_disables_a_bound():
    assert LengthFilter(min_chars=None, max_chars=None).filter(doc("")) is True


def test_run_counts_drops_per_reason():
    f = LengthFilter(min_chars=3, max_chars=5)
    kept = list(f.run([doc("a"), doc("abcd"), doc("b"), doc("abcdefgh")]))
    assert [d.text for d in kept] == ["abcd"]
    assert f.stats.as_dict() == {"in": 4, "kept": 1, "dropped": {"too_short": 2, "too_long": 1}}
