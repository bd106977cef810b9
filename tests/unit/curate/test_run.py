import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from components.common.artifacts import file_digest
from components.common.config import load_config
from components.common.errors import DataError
from components.common.shards import TokenWindows, read_manifest, read_quality
from components.common.tokenizer import load_tokenizer
from components.curate.run import curate

from .helpers import read_documents, write_jsonl

QUICKSTART = Path(__file__).resolve().parents[3] / "pipelines" / "data" / "quickstart"
SMALL = ["tokenizer.vocab_size=512", "curate.shard_tokens=5000", "curate.heldout_fraction=0.1"]
# Only the reading and length steps: for tests about input handling, not about the filters.
NO_FILTERS = [
    "curate.languages=[]",
    "curate.gopher_quality=false",
    "curate.gopher_repetition=false",
    "curate.c4_quality=false",
    "curate.fineweb_quality=false",
    "curate.near_dedup=false",
]


def config(tmp_path: Path, *overrides: str):
    return load_config("tiny", [f"run.home={tmp_path / 'home'}", *SMALL, *overrides])


def shakespeare_slice(path: Path, lines: int = 1500) -> Path:
    text = (QUICKSTART / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines()[:lines]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curate_e2e")
    src = shakespeare_slice(tmp / "shakespeare.txt")
    out = tmp / "dataset"
    summary = curate(config(tmp), source=str(src), out_dir=out)
    return src, out, summary


def test_manifest_token_counts_equal_shard_sizes_and_digests_match(curated):
    _, out, summary = curated
    manifest = read_manifest(out)
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in ("train", "heldout"):
        shards = manifest["splits"][split]["shards"]
        assert shards, f"no {split} shards"
        for shard in shards:
            path = out / shard["path"]
            assert path.stat().st_size // itemsize == shard["tokens"]
            assert file_digest(path) == shard["sha256"]
        assert manifest["splits"][split]["tokens"] == sum(s["tokens"] for s in shards)
        assert summary["metrics"][f"{split}_tokens"] == manifest["splits"][split]["tokens"]
    assert len(manifest["splits"]["train"]["shards"]) > 1, "shard_tokens=5000 should roll over"
    assert (
        manifest["tokenizer_digest"] == file_digest(out / "tokenizer" / "tokenizer.json") == summary["tokenizer_digest"]
    )


def test_manifest_records_source_files_with_digests(curated):
    src, out, summary = curated
    manifest = read_manifest(out)
    assert manifest["files"] == [
        {
            "uri": str(src),
            "sha256": file_digest(src),
            "records": summary["metrics"]["records_read"],
            "quarantined": 0,
            "error": None,
        }
    ]
    assert manifest["counts"] == summary["counts"]


def test_train_shards_decode_to_the_kept_train_documents(curated):
    _, out, summary = curated
    tok = load_tokenizer(out / "tokenizer")
    rows = read_documents(out)
    train = [r["text"] for r in rows if r["split"] == "train"]
    manifest = read_manifest(out)
    stream = np.concatenate(
        [np.fromfile(out / s["path"], dtype=manifest["dtype"]) for s in manifest["splits"]["train"]["shards"]]
    )
    ends = np.flatnonzero(stream == tok.eos_token_id)
    assert len(ends) == len(train) == summary["metrics"]["train_documents"]
    starts = np.concatenate([[0], ends[:-1] + 1])
    assert [tok.decode(stream[a:b].tolist()) for a, b in zip(starts[:20], ends[:20], strict=True)] == train[:20]


def test_quality_scores_cover_every_train_document_in_packing_order(curated):
    _, out, summary = curated
    manifest = read_manifest(out)
    doc_tokens, scores = read_quality(out, "train")
    assert len(scores) == summary["metrics"]["train_documents"] == manifest["splits"]["train"]["quality"]["documents"]
    assert int(doc_tokens.sum()) == manifest["splits"]["train"]["tokens"]
    assert ((scores >= 0) & (scores <= 1)).all() and scores.std() > 0
    assert manifest["curation"]["quality"]["file"] == "train/quality.npz"
    assert file_digest(out / "train" / "quality.npz") == manifest["splits"]["train"]["quality"]["sha256"]
    assert "quality score" in (out / "data_card.html").read_text()


def test_every_record_read_is_kept_dropped_or_quarantined(curated):
    _, _, summary = curated
    m = summary["metrics"]
    dropped = sum(v for k, v in m.items() if k.startswith("dropped_"))
    assert m["records_read"] == m["records_kept"] + dropped + m["quarantined"]
    assert m["dropped_too_short"] > 0, "speaker-only paragraphs are shorter than min_chars"
    assert m["records_kept"] == m["train_documents"] + m["heldout_documents"]
    assert all(isinstance(v, int | float) for v in m.values())


def test_validation_result_and_documents_are_written(curated):
    _, out, summary = curated
    assert json.loads((out / "validation.json").read_text())["success"] is True
    rows = read_documents(out)
    assert len(rows) == summary["metrics"]["records_kept"] and {r["split"] for r in rows} == {"train", "heldout"}
    assert len({r["id"] for r in rows}) == len(rows)


def test_dataset_is_readable_as_training_windows(curated):
    _, out, _ = curated
    windows = TokenWindows(out, "train", 65, verify=True)
    assert len(windows) > 10 and windows[len(windows) - 1].shape == (65,)


def test_curating_twice_gives_identical_shards(curated, tmp_path):
    src, out, _ = curated
    again = tmp_path / "again"
    curate(config(tmp_path), source=str(src), out_dir=again)
    assert read_manifest(again)["splits"] == read_manifest(out)["splits"]


def test_bad_input_is_quarantined_and_the_rest_curated(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shakespeare_slice(raw / "a.txt", lines=400)
    write_jsonl(
        raw / "b.jsonl", [{"text": "A well formed record that is long enough to keep."}, b"{oops", {"title": "no text"}]
    )
    broken = raw / "c.jsonl.gz"
    data = gzip.compress(b"".join(json.dumps({"text": f"line {i} " * 10}).encode() + b"\n" for i in range(3000)))
    broken.write_bytes(data[: len(data) // 3])
    summary = curate(config(tmp_path, *NO_FILTERS), source=str(raw), out_dir=tmp_path / "out")
    m = summary["metrics"]
    assert m["files"] == 3
    assert (m["quarantined_malformed_json"], m["quarantined_missing_text_field"], m["quarantined_corrupt_file"]) == (
        1,
        1,
        1,
    )
    assert m["quarantined"] == 2
    rows = [json.loads(line) for line in (tmp_path / "out" / "quarantine" / "records.jsonl").read_text().splitlines()]
    assert {(Path(r["file"]).name, r["line"], r["reason"]) for r in rows if r["reason"] != "corrupt_file"} == {
        ("b.jsonl", 2, "malformed_json"),
        ("b.jsonl", 3, "missing_text_field"),
    }
    texts = {r["text"] for r in read_documents(tmp_path / "out")}
    assert "A well formed record that is long enough to keep." in texts
    assert any(t.startswith("line 0 ") for t in texts), "records before the gzip break are kept"


def test_empty_result_names_the_source_and_the_filter(tmp_path):
    src = shakespeare_slice(tmp_path / "s.txt", lines=200)
    with pytest.raises(DataError, match=r"s\.txt.*'length' \(too_short: \d+\).*curate\.min_chars"):
        curate(config(tmp_path, "curate.min_chars=5000"), source=str(src), out_dir=tmp_path / "out")


def test_all_records_quarantined_names_the_reason(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"body": "x" * 100}] * 3)
    with pytest.raises(DataError, match=r"a\.jsonl.*'quarantine' \(missing_text_field: 3\).*curate\.text_field"):
        curate(config(tmp_path), source=str(src), out_dir=tmp_path / "out")


def test_source_without_records_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.txt: no records found in 1 file"):
        curate(config(tmp_path), source=str(tmp_path / "empty.txt"), out_dir=tmp_path / "out")


def test_missing_source_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="nowhere.txt"):
        curate(config(tmp_path), source=str(tmp_path / "nowhere.txt"), out_dir=tmp_path / "out")


def test_given_tokenizer_is_reused_unchanged(tmp_path, tiny_dataset):
    src = shakespeare_slice(tmp_path / "s.txt", lines=300)
    given = tiny_dataset / "tokenizer"
    summary = curate(
        config(tmp_path, "curate.expectations=false"), source=str(src), out_dir=tmp_path / "out", tokenizer_dir=given
    )
    assert summary["tokenizer_digest"] == file_digest(given / "tokenizer.json")
    assert read_manifest(tmp_path / "out")["tokenizer_digest"] == file_digest(given / "tokenizer.json")
    assert not (tmp_path / "out" / "validation.json").exists()


def test_tokenizer_path_knob_is_used_when_no_dir_is_given(tmp_path, tiny_dataset):
    src = shakespeare_slice(tmp_path / "s.txt", lines=300)
    given = tiny_dataset / "tokenizer"
    summary = curate(config(tmp_path, f"tokenizer.path={given}"), source=str(src), out_dir=tmp_path / "out")
    assert summary["tokenizer_digest"] == file_digest(given / "tokenizer.json")
