"""Incremental curation: a second run against a previous dataset keeps only documents that are new."""

import json
import random

import pytest

from components.common.config import load_config
from components.common.errors import ConfigError
from components.curate.run import curate

from .helpers import near_copy, read_documents, wikitext_paragraphs

NO_QUALITY = ["curate.gopher_quality=false", "curate.gopher_repetition=false", "curate.c4_quality=false"]


def config(tmp_path, *overrides):
    base = [f"run.home={tmp_path / 'home'}", "tokenizer.vocab_size=400", "curate.fineweb_quality=false"]
    return load_config("tiny", [*base, *NO_QUALITY, *overrides])


def write(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture(scope="module")
def paragraphs():
    return wikitext_paragraphs(160)


def test_second_run_keeps_only_new_documents(tmp_path, paragraphs):
    old, new = paragraphs[:80], paragraphs[80:]
    rng = random.Random(1)
    first = curate(config(tmp_path), source=str(write(tmp_path / "old.jsonl", old)), out_dir=tmp_path / "v1")
    assert first["metrics"]["records_kept"] == 80
    # The next crawl: 30 old paragraphs again verbatim, 30 lightly edited, and 80 new ones.
    raw = tmp_path / "raw2"
    raw.mkdir()
    write(raw / "a.jsonl", old[:30] + [near_copy(t, rng) for t in old[30:60]])
    write(raw / "b.jsonl", new)
    second = curate(
        config(tmp_path, f"curate.dedup_previous={tmp_path / 'v1'}"), source=str(raw), out_dir=tmp_path / "v2"
    )
    dedup = second["counts"][-1]
    assert dedup["name"] == "dedup" and dedup["rules"].get("seen_in_previous", 0) >= 57
    kept = {r["text"] for r in read_documents(tmp_path / "v2")}
    assert len(kept & set(new)) >= 78 and not kept & set(old[:30])
    # v2 carries v1's index: a third run against v2 finds both generations
    third = curate(
        config(tmp_path, f"curate.dedup_previous={tmp_path / 'v2'}"),
        source=str(write(tmp_path / "mix.jsonl", old[:5] + new[:5] + ["A brand new paragraph " * 20])),
        out_dir=tmp_path / "v3",
    )
    assert third["metrics"]["records_kept"] == 1


def test_previous_dataset_with_other_minhash_parameters_is_a_config_error(tmp_path, paragraphs):
    curate(config(tmp_path), source=str(write(tmp_path / "a.jsonl", paragraphs[:20])), out_dir=tmp_path / "v1")
    with pytest.raises(ConfigError, match="minhash"):
        curate(
            config(tmp_path, "curate.minhash_bands=10", f"curate.dedup_previous={tmp_path / 'v1'}"),
            source=str(write(tmp_path / "b.jsonl", paragraphs[20:40])),
            out_dir=tmp_path / "v2",
        )
