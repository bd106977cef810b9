from components.curate.document import Document
from components.curate.split import HELDOUT, TRAIN, assign_splits, split_score


def docs(n: int) -> list[Document]:
    return [Document(f"document number {i}", "mem", i) for i in range(n)]


def test_split_is_deterministic_for_a_seed():
    assert assign_splits(docs(200), 0.1, seed=7) == assign_splits(docs(200), 0.1, seed=7)


def test_split_changes_with_the_seed():
    assert assign_splits(docs(200), 0.1, seed=7) != assign_splits(docs(200), 0.1, seed=8)


def test_split_of_a_document_does_not_depend_on_the_others():
    corpus = docs(200)
    full = assign_splits(corpus, 0.2, seed=1)
    assert assign_splits(corpus[100:], 0.2, seed=1) == full[100:]


def test_heldout_fraction_is_roughly_honoured():
    n_heldout = assign_splits(docs(2000), 0.1, seed=3).count(HELDOUT)
    assert 140 <= n_heldout <= 260


def test_two_documents_give_one_heldout_and_one_train():
    assert sorted(assign_splits(docs(2), 0.0, seed=0)) == [HELDOUT, TRAIN]


def heldout_by_hash(n: int, fraction: float) -> list[Document]:
    """Documents whose hash alone would put them all in the held-out split."""
    return [d for d in docs(100) if split_score(d.text, 0) < fraction][:n]


def test_single_document_trains_even_if_its_hash_says_heldout():
    assert assign_splits(heldout_by_hash(1, 0.4), 0.4, seed=0) == [TRAIN]


def test_at_least_one_document_trains():
    assert sorted(assign_splits(heldout_by_hash(2, 0.4), 0.4, seed=0)) == [HELDOUT, TRAIN]
