"""Benchmark: lmforge's default curate pipeline vs datatrove's own equivalent pipeline; MinHash scaling.

Throughput: the same JSONL corpus (real text from ../shared/data: Shakespeare, WikiText-2, GSM8K) goes
through (a) ``curate()`` with the default knobs (the papers' thresholds) and a given tokenizer, and
(b) a pipeline written the datatrove way on ``LocalPipelineExecutor``: ``JsonlReader`` → the same
filter and formatter blocks → ``JsonlWriter`` + ``MinhashDedupSignature`` → buckets → clusters →
``JsonlReader`` → ``MinhashDedupFilter`` → ``DocumentTokenizer`` (shuffled token files). Each runs
in a child process with one task and one worker, after its imports (GX, matplotlib, transformers for
(a)), so
the figures are steady-state. Documents per CPU-second (user + system time of the child and its
helper processes) is documents/second/core; peak memory is the children's max RSS. lmforge does
more per document (quarantine with file/line, exact dedup, great-expectations suite, report, data
card, manifest lineage); the issue's target is >= 0.8x of datatrove.

MinHash: lmforge's MinHash path alone (signatures → buckets → clusters → decisions) on 1x, 2x and 4x
the documents, in-process; the times should grow about linearly.

No timed assertion; the children assert that both pipelines kept documents.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
N_DOCS = 12000


def corpus(n: int, min_chars: int = 100) -> list[str]:
    """``n`` real documents: Shakespeare speeches, WikiText paragraphs, GSM8K problems (cycled if short)."""
    shakespeare = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").split("\n\n")
    wiki = [
        line
        for split in ("valid", "test")
        for line in (SHARED / "wikitext2" / f"{split}.txt").read_text(encoding="utf-8").splitlines()
    ]
    gsm = [json.loads(x) for x in (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines()]
    docs = [t.strip() for t in shakespeare + wiki if len(t.strip()) >= min_chars and not t.strip().startswith("=")]
    docs += [g["question"] + "\n" + g["answer"] for g in gsm]
    docs = docs[::2] + docs[1::2]  # interleave sources
    return [docs[i % len(docs)] + ("" if i < len(docs) else f" (copy {i // len(docs)})") for i in range(n)]


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_mb() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return max(own.ru_maxrss, kids.ru_maxrss) / 1024


def run_lmforge(src: Path, work: Path, tokenizer: Path) -> dict:
    import great_expectations  # noqa: F401  (imports are per process, not per document)
    import matplotlib.pyplot  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401

    from components.common.config import load_config
    from components.curate.run import curate

    cfg = load_config("small", [f"run.home={work / 'home'}", f"curate.source={src}"])
    base_mb = _peak_mb()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    summary = curate(cfg, source=str(src), out_dir=work / "out", tokenizer_dir=tokenizer)
    assert summary["metrics"]["records_kept"] > 0
    kept = summary["metrics"]["records_kept"]
    return {"seconds": time.perf_counter() - t0, "cpu": _cpu_seconds() - c0, "kept": kept, "base_mb": base_mb}


def run_datatrove(src: Path, work: Path, tokenizer: Path) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import MinhashDedupFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    from components.common.config import load_config
    from components.curate.dedup import minhash_config, minhash_params
    from components.curate.pipeline import bucket_pipeline, cluster_pipeline, document_steps, map_pipeline
    from components.curate.words import RegexWordTokenizer

    cfg = load_config("small", [f"run.home={work / 'home'}"])
    words = RegexWordTokenizer()
    base_mb = _peak_mb()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    # The same filter/formatter blocks lmforge runs (its reader left out: datatrove reads for itself).
    blocks = document_steps(cfg, uris=[str(src)], work=work, tokenizer=words)[1:]
    minhash = minhash_config(minhash_params(cfg))

    def run(pipeline, name, tasks=1):
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=str(work / "logs" / name)).run()

    reader = JsonlReader(str(src.parent), glob_pattern=src.name)
    run([reader, *map_pipeline(blocks, work=work, minhash=minhash, tokenizer=words)], "filters")
    run(bucket_pipeline(work=work, index_dir=work / "index", index_name="bench", minhash=minhash), "buckets", 14)
    run(cluster_pipeline(work=work, minhash=minhash), "clusters")
    tokenize = DocumentTokenizer(str(work / "tokens"), tokenizer_name_or_path=str(tokenizer / "tokenizer.json"))
    run([JsonlReader(str(work / "docs")), MinhashDedupFilter(str(work / "clusters")), tokenize], "dedup_tokenize")
    kept = json.loads((work / "logs" / "dedup_tokenize" / "stats.json").read_text())[1]["stats"]["forwarded"]
    kept = kept["total"] if isinstance(kept, dict) else kept
    assert kept > 0
    return {"seconds": time.perf_counter() - t0, "cpu": _cpu_seconds() - c0, "kept": kept, "base_mb": base_mb}


def child(mode: str, src: str, work: str, tokenizer: str) -> None:
    fn = {"lmforge": run_lmforge, "datatrove": run_datatrove}[mode]
    result = fn(Path(src), Path(work), Path(tokenizer))
    result["peak_mb"] = _peak_mb()
    print(json.dumps(result))


def run_child(*args: str) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, timeout=900, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_curate_throughput_vs_datatrove(tmp_path):
    from components.common.tokenizer import train_tokenizer

    docs = corpus(N_DOCS)
    src = tmp_path / "raw" / "corpus.jsonl"
    src.parent.mkdir()
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    train_tokenizer(docs[:2000], 2048).save_pretrained(tmp_path / "tokenizer")
    results = {}
    for mode in ("datatrove", "lmforge"):
        results[mode] = run_child(mode, str(src), str(tmp_path / mode), str(tmp_path / "tokenizer"))
    per_core = {m: N_DOCS / r["cpu"] for m, r in results.items()}
    wall = {m: N_DOCS / r["seconds"] for m, r in results.items()}
    print(f"\n[bench] curate, {N_DOCS} documents (Shakespeare, WikiText-2, GSM8K), default thresholds, 1 task:")
    for m, r in results.items():
        print(
            f"  {m:9s}: {wall[m]:7.0f} docs/s wall, {per_core[m]:7.0f} docs/CPU-s, peak RSS {r['peak_mb']:.0f} MB "
            f"({r['base_mb']:.0f} MB after imports), {r['kept']} kept"
        )
    print(
        f"  lmforge / datatrove: {per_core['lmforge'] / per_core['datatrove']:.2f}x docs/s/core "
        f"({wall['lmforge'] / wall['datatrove']:.2f}x wall; target >= 0.8x)"
    )


def test_minhash_dedup_time_grows_linearly(tmp_path):
    from components.curate.dedup import DedupDecisions, dedup_documents, minhash_config
    from components.curate.executor import run_pipeline
    from components.curate.pipeline import CLUSTERS, DOCS, bucket_pipeline, cluster_pipeline, map_pipeline
    from components.curate.readers import SourceReaderStep
    from components.curate.words import RegexWordTokenizer

    base = 3000
    params = {"n_grams": 5, "num_buckets": 14, "hashes_per_bucket": 8, "seed": 1}
    times = {}
    for scale in (1, 2, 4):
        work = tmp_path / f"x{scale}"
        src = work / "in.jsonl"
        src.parent.mkdir()
        src.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(base * scale)))
        mh, words, common = minhash_config(params), RegexWordTokenizer(), {"workers": 1, "executor": "local"}
        t0 = time.perf_counter()
        steps = [("read", SourceReaderStep([str(src)], "text", work))]
        run_pipeline(
            map_pipeline(steps, work=work, minhash=mh, tokenizer=words), logging_dir=work / "l1", tasks=1, **common
        )
        run_pipeline(
            bucket_pipeline(work=work, index_dir=work / "index", index_name="b", minhash=mh),
            logging_dir=work / "l2",
            tasks=14,
            **common,
        )
        run_pipeline(cluster_pipeline(work=work, minhash=mh), logging_dir=work / "l3", tasks=1, **common)
        kept, _, _ = dedup_documents(work / DOCS, 1, DedupDecisions(work / CLUSTERS), set())
        times[scale] = time.perf_counter() - t0
        assert kept
    print(f"\n[bench] MinHash dedup (read, signatures, 14 bands x 8 rows, clusters, decisions), {base} docs = 1x:")
    for scale, seconds in times.items():
        print(f"  {scale}x: {seconds:6.2f} s  ({seconds / times[1]:.2f}x the 1x time, linear would be {scale:.0f}x)")


if __name__ == "__main__":
    child(*sys.argv[1:])
