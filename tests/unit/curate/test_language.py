import pytest

from components.common.errors import ConfigError
from components.curate.base import step_counts
from components.curate.document import Document
from components.curate.language import LinguaLanguageFilter

CANDIDATES = ["en", "de", "fr", "es"]
ENGLISH = "The weather was fine, so we walked along the river and talked about books we had read."
GERMAN = "Das Wetter war schön, also gingen wir am Fluss entlang und sprachen über Bücher, die wir gelesen hatten."


def test_keeps_allowed_language_and_records_code_and_score():
    f = LinguaLanguageFilter(["en"], CANDIDATES)
    d = Document(ENGLISH, "mem", 1)
    assert f.filter(d) is True
    assert d.metadata["language"] == "en" and d.metadata["language_score"] > 0.9


def test_drops_language_outside_the_allow_list():
    d = Document(GERMAN, "mem", 1)
    assert LinguaLanguageFilter(["en"], CANDIDATES).filter(d) == (False, "language_not_allowed")
    assert d.metadata["language"] == "de"


def test_allow_list_may_hold_several_languages():
    f = LinguaLanguageFilter(["en", "de"], CANDIDATES)
    assert f.filter(Document(GERMAN, "mem", 1)) is True


def test_low_confidence_is_dropped_by_the_threshold():
    # Short, ambiguous English: lingua's top guess is English at ~0.5 confidence against German.
    text = "The hotel is open"
    assert LinguaLanguageFilter(["en"], CANDIDATES, threshold=0.4).filter(Document(text, "mem", 1)) is True
    f = LinguaLanguageFilter(["en"], CANDIDATES, threshold=0.7)
    assert f.filter(Document(text, "mem", 1)) == (False, "language_low_score")


def test_text_without_letters_is_unknown():
    assert LinguaLanguageFilter(["en"], CANDIDATES).filter(Document("12345 678 ---", "mem", 1)) == (
        False,
        "language_unknown",
    )


def test_filter_pickles_without_its_native_detector_and_counts_per_rule():
    import pickle

    f = LinguaLanguageFilter(["en"], CANDIDATES)
    f.filter(Document(ENGLISH, "mem", 1))
    g = pickle.loads(pickle.dumps(f))
    list(g.run([Document(ENGLISH, "m", 1), Document(GERMAN, "m", 2)]))
    assert step_counts(g)["rules"] == {"language_not_allowed": 1}


def test_unknown_language_code_is_a_config_error():
    with pytest.raises(ConfigError, match="curate.language_candidates.*'xx'"):
        LinguaLanguageFilter(["en"], ["en", "xx"])
