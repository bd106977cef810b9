import numpy as np

from components.curate.base import step_counts
from components.curate.dedup import ExactDedupFilter, dedup_documents
from components.curate.document import Document, content_hash
from components.curate.normalize import UnicodeNormalizer


def test_keeps_first_occurrence_and_drops_exact_repeats():
    f = ExactDedupFilter()
    docs = [Document("to be", "a", 1), Document("or not", "a", 3), Document("to be", "b", 9)]
    kept = list(f.run(docs))
    assert [(d.file, d.line) for d in kept] == [("a", 1), ("a", 3)]
    assert step_counts(f)["rules"] == {"exact_duplicate": 1}


def test_sets_document_id_to_content_hash():
    d = Document("some text", "a", 1)
    ExactDedupFilter().filter(d)
    assert d.id == content_hash("some text") and len(d.id) == 32


def test_texts_equal_after_normalization_are_duplicates():
    docs = [Document("Caf\u00e9\r\n", "a", 1), Document("Cafe\u0301\n", "a", 5)]
    dedup = ExactDedupFilter()
    kept = list(dedup.run(UnicodeNormalizer("NFC").run(docs)))
    assert len(kept) == 1 and step_counts(dedup)["rules"] == {"exact_duplicate": 1}


def test_near_duplicates_are_kept_by_the_exact_filter():
    kept = list(ExactDedupFilter().run([Document("to be", "a", 1), Document("to be.", "a", 2)]))
    assert len(kept) == 2


def test_texts_of_a_previous_dataset_are_dropped_as_seen_in_previous():
    previous = {bytes.fromhex(content_hash("old news"))}
    f = ExactDedupFilter(previous)
    assert f.filter(Document("old news", "a", 1)) == (False, "seen_in_previous")
    assert f.filter(Document("fresh news", "a", 2)) is True


class NoClusters:
    def reason(self, rank, index):
        return "near_duplicate" if (rank, index) == (0, 1) else None


def test_exact_twin_of_a_near_duplicate_is_kept_once(tmp_path):
    # Doc 1 is removed by MinHash; its exact twin (doc 2) must not then be dropped as an exact duplicate
    # of a document that was never kept.
    import orjson

    rows = [{"text": t, "metadata": {"file": "f", "line": i}} for i, t in enumerate(["a b c", "x y z", "x y z"], 1)]
    (tmp_path / "00000.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    kept, entry, _ = dedup_documents(tmp_path, 1, NoClusters(), set())
    assert [d.text for d in kept] == ["a b c", "x y z"]
    assert entry["rules"] == {"near_duplicate": 1} and entry["kept"] == 2
    assert np.array_equal([d.line for d in kept], [1, 3])
