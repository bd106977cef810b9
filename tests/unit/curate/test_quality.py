"""datatrove's Gopher, C4 and FineWeb rules as lmforge configures them, on crafted documents."""

from components.common.config import load_config
from components.curate.base import ExampleSink, merge_examples
from components.curate.document import Document
from components.curate.quality import quality_filters
from components.curate.words import RegexWordTokenizer

PROSE = (
    "The harbour was quiet in the early morning. Fishermen mended their nets and talked about the weather. "
    "A gull landed on the wall and watched them with great interest. Later the sun rose over the hills and "
    "the town began to wake. Children ran to school, and the baker opened his shop with a smile. "
    "It was the kind of day that people remember for a long time, and nobody wanted it to end."
)


def filters(tmp_path, *overrides):
    cfg = load_config("tiny", [f"run.home={tmp_path}", *overrides])
    return dict(quality_filters(cfg.curate, RegexWordTokenizer(), lambda name: ExampleSink(tmp_path / "ex", name)))


def doc(text: str) -> Document:
    return Document(text, "mem", 1)


def test_clean_prose_passes_every_rule_set_at_the_papers_thresholds(tmp_path):
    papers = ["curate.gopher_min_words=50", "curate.gopher_min_alpha_ratio=0.8", "curate.c4_min_sentences=5"]
    for name, f in filters(tmp_path, *papers, "curate.c4_terminal_punct=true").items():
        assert f.filter(doc(PROSE)) is True, name


def test_gopher_drops_a_short_document(tmp_path):
    f = filters(tmp_path, "curate.gopher_min_words=50")["gopher_quality"]
    assert f.filter(doc("The cat sat on the mat with the dog.")) == (False, "gopher_short_doc")


def test_gopher_drops_symbol_soup(tmp_path):
    f = filters(tmp_path)["gopher_quality"]
    assert f.filter(doc("## ## ## the and of to ## ## ## with have ## ##")) == (False, "gopher_too_many_hashes")


def test_gopher_repetition_drops_a_repeated_line(tmp_path):
    f = filters(tmp_path)["gopher_repetition"]
    text = "\n".join(["Buy cheap watches online today."] * 6 + ["Contact us."])
    assert f.filter(doc(text))[0] is False


def test_c4_drops_a_page_with_lorem_ipsum_and_records_the_example(tmp_path):
    f = filters(tmp_path)["c4_quality"]
    bad = doc(PROSE + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.")
    kept = list(f.run([bad, doc(PROSE)]))
    assert len(kept) == 1 and f.stats["dropped_lorem_ipsum"].total == 1
    assert merge_examples(tmp_path / "ex")["lorem_ipsum"][0].startswith("The harbour")


def test_c4_line_rules_remove_boilerplate_lines_and_score_what_is_left(tmp_path):
    f = filters(tmp_path, "curate.c4_terminal_punct=true", "curate.c4_min_words_per_line=3")["c4_quality"]
    d = doc(PROSE + "\nMenu\nPlease enable JavaScript to view this page.")
    assert f.filter(d) is True
    assert d.text == PROSE and 0.8 < d.metadata["quality_score"] < 1.0


def test_fineweb_drops_a_list_of_short_lines(tmp_path):
    f = filters(tmp_path, "curate.fineweb_short_line_ratio=0.67")["fineweb_quality"]
    text = "\n".join(["Home", "About us", "Products", "Contact", "Login", "A longer line that ends with a stop."])
    assert f.filter(doc(text)) == (False, "short_line_ratio")


def test_rule_sets_can_be_switched_off(tmp_path):
    off = ["curate.gopher_quality=false", "curate.gopher_repetition=false", "curate.c4_quality=false"]
    assert list(filters(tmp_path, *off, "curate.fineweb_quality=false")) == []
