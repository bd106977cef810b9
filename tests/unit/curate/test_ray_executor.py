"""The same pipeline config on datatrove's RayPipelineExecutor gives the same curated documents."""

import json
import os

import pytest

from components.common.config import load_config
from components.curate.run import curate

from .helpers import read_documents, wikitext_paragraphs


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=f"/tmp/lmf-cur-{os.getpid()}")
    yield
    if started:
        ray.shutdown()


def test_ray_and_local_executors_curate_the_same_documents(tmp_path, ray_local):
    raw = tmp_path / "raw"
    raw.mkdir()
    paragraphs = wikitext_paragraphs(60, min_chars=300)
    for i in range(2):
        part = paragraphs[i::2] + paragraphs[:3]  # the first three are in both files: cross-task duplicates
        (raw / f"part-{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    base = [f"run.home={tmp_path}", "tokenizer.vocab_size=400", "curate.tasks=2", "curate.minhash_bands=4"]
    results = {}
    for executor in ("local", "ray"):
        cfg = load_config("tiny", [*base, f"curate.executor={executor}", "curate.workers=2"])
        summary = curate(cfg, source=str(raw), out_dir=tmp_path / executor)
        results[executor] = (summary["counts"], sorted(r["id"] for r in read_documents(tmp_path / executor)))
    assert results["ray"] == results["local"]
    dedup = results["ray"][0][-1]
    assert dedup["dropped"] >= 3
