from components.curate.dedup import ExactDedupFilter
from components.curate.document import Document, content_hash
from components.curate.normalize import UnicodeNormalizer


def test_keeps_first_occurrence_and_drops_exact_repeats():
    f = ExactDedupFilter()
    docs = [Document("to be", "a", 1), Document("or not", "a", 3), Document("to be", "b", 9)]
    kept = list(f.run(docs))
    assert [(d.file, d.line) for d in kept] == [("a", 1), ("a", 3)]
    assert f.stats.dropped == {"duplicate": 1}


def test_sets_document_id_to_content_hash():
    d = Document("some text", "a", 1)
    ExactDedupFilter().filter(d)
    assert d.id == content_hash("some text") and len(d.id) == 32


def test_texts_equal_after_normalization_are_duplicates():
    docs = [Document("Caf\u00e9\r\n", "a", 1), Document("Cafe\u0301\n", "a", 5)]
    dedup = ExactDedupFilter()
    kept = list(dedup.run(UnicodeNormalizer("NFC").run(docs)))
    assert len(kept) == 1 and dedup.stats.dropped["duplicate"] == 1


def test_near_duplicates_are_kept():
    kept = list(ExactDedupFilter().run([Document("to be", "a", 1), Document("to be.", "a", 2)]))
    assert len(kept) == 2
