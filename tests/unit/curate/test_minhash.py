"""Near-duplicates planted into real Wikipedia text are found by the MinHash stages (precision, recall)."""

import json
import random

from components.curate.dedup import DedupDecisions, dedup_documents, minhash_config
from components.curate.executor import run_pipeline
from components.curate.pipeline import CLUSTERS, DOCS, bucket_pipeline, cluster_pipeline, map_pipeline
from components.curate.readers import SourceReaderStep
from components.curate.words import RegexWordTokenizer

from .helpers import near_copy, wikitext_paragraphs

PARAMS = {"n_grams": 5, "num_buckets": 14, "hashes_per_bucket": 8, "seed": 1234}


def near_dedup(files: list, work, params=PARAMS):
    """lmforge's MinHash path alone (reader → signatures → buckets → clusters → decisions)."""
    mh, tok = minhash_config(params), RegexWordTokenizer()
    steps = [("read", SourceReaderStep([str(f) for f in files], "text", work))]
    common = {"workers": 1, "executor": "local"}
    run_pipeline(
        map_pipeline(steps, work=work, minhash=mh, tokenizer=tok), logging_dir=work / "l1", tasks=len(files), **common
    )
    bucket = bucket_pipeline(work=work, index_dir=work / "index", index_name="test", minhash=mh)
    run_pipeline(bucket, logging_dir=work / "l2", tasks=params["num_buckets"], **common)
    run_pipeline(cluster_pipeline(work=work, minhash=mh), logging_dir=work / "l3", tasks=1, **common)
    decisions = DedupDecisions(work / CLUSTERS)
    kept, entry, _ = dedup_documents(work / DOCS, len(files), decisions, set())
    return kept, entry, decisions


def test_planted_near_duplicates_are_found_with_high_precision_and_recall(tmp_path):
    rng = random.Random(0)
    originals = wikitext_paragraphs(300)
    planted = rng.sample(range(len(originals)), 60)
    copies = {i: near_copy(originals[i], rng, 0.02) for i in planted}  # word-5-gram Jaccard ~0.8
    group = {t: i for i, t in enumerate(originals)} | {t: i for i, t in copies.items()}
    # originals in one file, the copies (shuffled) in another: dedup must work across inputs
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"text": t}) + "\n" for t in originals))
    shuffled = list(copies.values())
    rng.shuffle(shuffled)
    b.write_text("".join(json.dumps({"text": t}) + "\n" for t in shuffled))

    kept, entry, decisions = near_dedup([a, b], tmp_path / "work")
    kept_groups = [group[d.text] for d in kept]
    dropped = entry["rules"].get("near_duplicate", 0)
    found = sum(1 for i in planted if kept_groups.count(i) == 1)
    false_drops = sum(1 for i in range(len(originals)) if i not in copies and kept_groups.count(i) == 0)
    recall = found / len(planted)
    precision = (dropped - false_drops) / dropped if dropped else 0.0
    print(
        f"\n[minhash] planted {len(planted)} near-duplicates (2% of words edited, Jaccard ~0.8) among {len(originals)} "
        f"WikiText paragraphs: precision {precision:.3f}, recall {recall:.3f}, clusters {decisions.cluster_sizes()}"
    )
    assert recall >= 0.9 and precision >= 0.95
    assert decisions.cluster_sizes().get("2", 0) >= found - false_drops


def test_distinct_paragraphs_are_all_kept(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"text": t}) + "\n" for t in wikitext_paragraphs(120)))
    kept, entry, decisions = near_dedup([a], tmp_path / "work")
    assert len(kept) == 120 and entry["dropped"] == 0 and decisions.cluster_sizes() == {}
