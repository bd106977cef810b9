from components.curate.base import step_counts
from components.curate.document import Document
from components.curate.filters import DEFAULT_WORDLIST, LengthFilter, WordListFilter, load_wordlist


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
    assert step_counts(f) == {
        "input": 4,
        "kept": 1,
        "dropped": 3,
        "rules": {"too_short": 2, "too_long": 1},
        "modified": {},
    }


def test_wordlist_drops_on_a_listed_word_case_insensitively():
    f = WordListFilter(["nsfw", "adult dating"])
    assert f.filter(doc("A NSFW gallery of things")) == (False, "listed_words")
    assert f.filter(doc("Try Adult  Dating now")) is True, "phrases match with single spaces only"
    assert f.filter(doc("Try adult dating now")) == (False, "listed_words")


def test_wordlist_matches_whole_words_only():
    f = WordListFilter(["xxx"])
    assert f.filter(doc("the xxxl shirt and maxxx")) is True


def test_wordlist_tolerates_up_to_max_hits():
    f = WordListFilter(["spam"], max_hits=2)
    assert f.filter(doc("spam spam")) is True
    assert f.filter(doc("spam spam spam")) == (False, "listed_words")


def test_default_wordlist_loads_without_comments():
    words = load_wordlist(DEFAULT_WORDLIST)
    assert "porn" in words and not any(w.startswith("#") for w in words)
    assert WordListFilter(words).filter(doc("To be, or not to be: that is the question.")) is True
