"""Informative subsets: facility location by lazy greedy, partitioned selection, and the curate step."""

import itertools
import math

import numpy as np
import pytest

from components.common.shards import read_manifest
from components.curate.run import curate
from components.curate.select import coverage, facility_location, select_subset, word_vectors

from .helpers import read_documents
from .test_run import NO_FILTERS, config, shakespeare_slice


def _plain_greedy(sim: np.ndarray, k: int) -> list[int]:
    chosen, covered = [], np.zeros(len(sim))
    for _ in range(k):
        gains = [np.maximum(sim[:, j] - covered, 0).sum() if j not in chosen else -1 for j in range(len(sim))]
        chosen.append(int(np.argmax(gains)))
        covered = np.maximum(covered, sim[:, chosen[-1]])
    return chosen


def _random_similarity(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).random((n, 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


@pytest.mark.parametrize("seed", range(5))
def test_lazy_greedy_picks_what_plain_greedy_picks(seed):
    sim = _random_similarity(40, seed)
    assert facility_location(sim, 8) == _plain_greedy(sim, 8)


def test_greedy_is_within_the_submodular_bound_of_the_optimum():
    sim = _random_similarity(12, 7)
    best = max(coverage(sim, s) for s in itertools.combinations(range(12), 3))
    assert coverage(sim, facility_location(sim, 3)) >= (1 - 1 / math.e) * best


def test_one_document_per_topic_is_chosen_before_a_second_of_any():
    texts = [f"the cat sat on the mat and purred number {i}" for i in range(6)]
    texts += ["stock prices fell as the market closed lower", "the market rallied and stock prices rose"]
    texts += ["rain and wind over the northern hills tonight"]
    sim = np.clip(word_vectors(texts) @ word_vectors(texts).T, 0, None)
    chosen = facility_location(sim, 3)
    assert {i // 6 if i < 6 else (1 if i < 8 else 2) for i in chosen} == {0, 1, 2}


def test_each_partition_keeps_its_share_deterministically():
    texts = [f"document {i} about topic {i % 7} with words {i % 3}" for i in range(50)]
    keep, record = select_subset(texts, fraction=0.25, method="facility_location", partition=20, seed=3)
    assert record["partitions"] == 3 and len(keep) == 5 + 5 + 4  # ceil(0.25 * 17), ceil(0.25 * 17), ceil(0.25 * 16)
    assert keep == select_subset(texts, fraction=0.25, method="facility_location", partition=20, seed=3)[0]
    random_keep, random_record = select_subset(texts, fraction=0.25, method="random", partition=20, seed=3)
    assert len(random_keep) == len(keep) and random_record["coverage"] is None


def test_facility_location_covers_real_text_better_than_a_random_subset():
    from .test_run import QUICKSTART

    paragraphs = (QUICKSTART / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")[:400]
    x = word_vectors(paragraphs)
    sim = np.clip(x @ x.T, 0, None)
    chosen = facility_location(sim, 100)
    random_cover = [coverage(sim, np.random.default_rng(s).choice(400, 100, replace=False)) for s in range(5)]
    assert coverage(sim, chosen) > max(random_cover)


def test_curate_subsets_the_train_split_only_and_records_it(tmp_path):
    src = shakespeare_slice(tmp_path / "shakespeare.txt", lines=600)
    cfg = config(tmp_path, *NO_FILTERS, "curate.select_fraction=0.25")  # heldout_fraction=0.1
    m = curate(cfg, source=str(src), out_dir=tmp_path / "subset")["metrics"]
    selection = read_manifest(tmp_path / "subset")["curation"]["selection"]
    assert selection["method"] == "facility_location"
    assert m["train_documents"] == m["selected_documents"] == math.ceil(0.25 * selection["candidates"])
    # held-out data stays whole: still ~10% of all documents, not a quarter of that
    assert m["heldout_documents"] / (m["heldout_documents"] + selection["candidates"]) == pytest.approx(0.1, abs=0.04)
    assert len([d for d in read_documents(tmp_path / "subset") if d["split"] == "train"]) == m["train_documents"]
    assert "informative subset" in (tmp_path / "subset" / "data_card.html").read_text()


def test_heldout_stream_is_the_same_whatever_fraction_of_train_is_selected(tmp_path, tiny_dataset):
    # The tokenizer is given so that only the train split differs between the two runs.
    src = shakespeare_slice(tmp_path / "shakespeare.txt", lines=600)
    tok = f"tokenizer.path={tiny_dataset / 'tokenizer'}"
    outs = {}
    for fraction in ("1.0", "0.25"):
        cfg = config(tmp_path, *NO_FILTERS, tok, "curate.expectations=false", f"curate.select_fraction={fraction}")
        outs[fraction] = out = tmp_path / f"fraction-{fraction}"
        curate(cfg, source=str(src), out_dir=out)
    full, subset = (read_manifest(outs[f])["splits"] for f in ("1.0", "0.25"))
    assert subset["train"]["tokens"] < full["train"]["tokens"]
    assert subset["heldout"] == full["heldout"]
    for shard in full["heldout"]["shards"]:
        assert (outs["0.25"] / shard["path"]).read_bytes() == (outs["1.0"] / shard["path"]).read_bytes()
    heldout = [[d["text"] for d in read_documents(outs[f]) if d["split"] == "heldout"] for f in ("1.0", "0.25")]
    assert heldout[0] == heldout[1] and len(heldout[0]) > 5
