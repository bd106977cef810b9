"""Data sources: quick-start names, files, directories, s3 prefixes, and their fingerprints."""

import pytest

from components.common.errors import DataError
from components.common.sources import resolve_source, source_fingerprint
from components.common.storage import open_store


def test_quickstart_name_resolves_to_shipped_file():
    [path] = resolve_source("quickstart/tinyshakespeare.txt")
    assert path.endswith("pipelines/data/quickstart/tinyshakespeare.txt")


def test_unknown_quickstart_name_lists_shipped_files():
    with pytest.raises(DataError, match="tinyshakespeare.txt"):
        resolve_source("quickstart/nothing.txt")


def test_directory_lists_only_data_files_sorted(tmp_path):
    for name in ("b.jsonl", "a.txt", "notes.md", "c.jsonl.gz"):
        (tmp_path / name).write_text("x")
    assert [p.rsplit("/", 1)[1] for p in resolve_source(str(tmp_path))] == ["a.txt", "b.jsonl", "c.jsonl.gz"]


def test_missing_path_is_named(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}/none: no such file or directory"):
        resolve_source(f"{tmp_path}/none")


def test_s3_prefix_lists_objects(s3_server, tmp_path):
    store = open_store("s3://x", s3_endpoint=s3_server, s3_secure=False)
    store.write_text("s3://raw/corpus/part-1.txt", "hello")
    store.write_text("s3://raw/corpus/readme.md", "skip me")
    assert resolve_source("s3://raw/corpus", store) == ["s3://raw/corpus/part-1.txt"]


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    before = source_fingerprint(resolve_source(str(tmp_path)))
    (tmp_path / "a.txt").write_text("two")
    assert source_fingerprint(resolve_source(str(tmp_path))) != before
