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


def _fingerprint(source) -> str:
    return source_fingerprint(str(source), resolve_source(str(source)))


def _corpus(root):
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("one")
    (root / "sub" / "b.jsonl").write_text('{"text": "two"}')
    return root


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    before = _fingerprint(tmp_path)
    (tmp_path / "a.txt").write_text("two")
    assert _fingerprint(tmp_path) != before


def test_fingerprint_is_the_same_for_the_same_files_under_two_directories(tmp_path):
    assert _fingerprint(_corpus(tmp_path / "ci-clone" / "data")) == _fingerprint(_corpus(tmp_path / "dev-box"))


def test_fingerprint_of_a_single_file_does_not_depend_on_its_directory(tmp_path):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "a.txt").write_text("one")
    assert _fingerprint(tmp_path / "x" / "a.txt") == _fingerprint(tmp_path / "y" / "a.txt")


def test_fingerprint_changes_when_one_byte_changes(tmp_path):
    root = _corpus(tmp_path / "data")
    before = _fingerprint(root)
    (root / "sub" / "b.jsonl").write_text('{"text": "twO"}')
    assert _fingerprint(root) != before


def test_fingerprint_changes_when_a_file_is_renamed(tmp_path):
    root = _corpus(tmp_path / "data")
    before = _fingerprint(root)
    (root / "a.txt").rename(root / "c.txt")
    assert _fingerprint(root) != before


def test_s3_fingerprint_names_keys_relative_to_the_prefix(s3_server):
    store = open_store("s3://x", s3_endpoint=s3_server, s3_secure=False)
    for prefix in ("s3://raw/ci/corpus", "s3://raw/dev/corpus"):
        store.write_text(f"{prefix}/part-1.txt", "hello")
    ci, dev = (
        source_fingerprint(p, resolve_source(p, store), store) for p in ("s3://raw/ci/corpus", "s3://raw/dev/corpus/")
    )
    assert ci == dev
    store.write_text("s3://raw/dev/corpus/part-2.txt", "hello")
    assert source_fingerprint("s3://raw/dev/corpus", resolve_source("s3://raw/dev/corpus", store), store) != ci
