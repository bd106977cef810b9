"""Resolve a user-given data source to the files it names.

A source is one of: ``quickstart/<file>`` (data shipped with lmforge, for offline demos), a local
file, a local directory (every ``.txt``, ``.jsonl``, ``.jsonl.gz`` and ``.parquet`` below it), or an ``s3://``
prefix (same suffixes). Errors name the source and what was expected.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

from components.common.errors import DataError

QUICKSTART_DIR = Path(__file__).resolve().parents[2] / "pipelines" / "data" / "quickstart"
SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".txt.gz", ".parquet")


def has_data_suffix(name: str) -> bool:
    return name.endswith(SUFFIXES)


def resolve_source(source: str, store=None) -> list[str]:
    """Files (local paths or s3:// URIs) that ``source`` names, sorted for a stable order.

    ``store`` is an :class:`~components.common.storage.ObjectStore` able to list s3:// URIs.
    """
    if not source:
        raise DataError(
            "empty data source: set curate.source (or continual.source / align.source) to a path or s3:// prefix"
        )
    if source.startswith("s3://"):
        if store is None:
            raise DataError(f"{source}: an s3:// source needs storage.s3_endpoint and credentials")
        files = [u for u in store.list(source) if has_data_suffix(u)]
        if not files and store.exists(source) and has_data_suffix(source):
            files = [source]
        if not files:
            raise DataError(f"{source}: no .txt/.jsonl/.jsonl.gz objects under this prefix")
        return files
    if source.startswith("quickstart/"):
        path = QUICKSTART_DIR / source.removeprefix("quickstart/")
        if not path.exists():
            known = ", ".join(sorted(p.name for p in QUICKSTART_DIR.glob("*") if has_data_suffix(p.name)))
            raise DataError(f"{source}: no such quick-start file; shipped: {known}")
    else:
        path = Path(source.removeprefix("file://")).expanduser()
    if path.is_file():
        return [str(path.resolve())]
    if path.is_dir():
        files = sorted(str(p.resolve()) for p in path.rglob("*") if p.is_file() and has_data_suffix(p.name))
        if not files:
            raise DataError(f"{source}: directory holds no .txt/.jsonl/.jsonl.gz files")
        return files
    raise DataError(f"{source}: no such file or directory")


def source_fingerprint(source: str, files: list[str], store=None) -> str:
    """sha256 over each file's name relative to the source root and its content digest: changes when
    data lands, is edited or renamed.

    Part of the curate step's content address, so new data under an unchanged ``source`` reruns
    curation (and everything downstream) while an untouched corpus is reused. ``files`` are what
    :func:`resolve_source` returned for ``source``. Names are relative (to the directory or s3 prefix
    ``source`` names; a single file by its base name) because absolute paths differ between checkouts
    and machines: a CI clone and a dev box must give the same address for the same data.
    """
    import hashlib

    from components.common.storage import LocalStore

    local = LocalStore()
    root = _source_root(source)
    h = hashlib.sha256()
    for f in files:
        digest = store.digest(f) if f.startswith("s3://") else local.digest("file://" + f)
        h.update(f"{_relative_name(f, root)}\t{digest}\n".encode())
    return h.hexdigest()


def _source_root(source: str) -> str:
    """What the files of ``source`` are named relative to: the s3 prefix or the resolved local path."""
    if source.startswith("s3://"):
        return source.rstrip("/")
    if source.startswith("quickstart/"):
        return str(QUICKSTART_DIR / source.removeprefix("quickstart/"))
    return str(Path(source.removeprefix("file://")).expanduser().resolve())


def _relative_name(file: str, root: str) -> str:
    """``file`` relative to ``root``; a source naming one file (``file == root``) gives its base name."""
    if file == root:
        return file.rsplit("/", 1)[-1]
    if file.startswith("s3://"):
        return file.removeprefix(root + "/")
    return os.path.relpath(file, root)


def read_lines(uri: str, store=None) -> Iterator[str]:
    """The text lines of one file that :func:`resolve_source` named (a local path or an ``s3://`` URI read
    through ``store``), gunzipped when it ends in ``.gz``, newline stripped; bad UTF-8 is replaced, not
    fatal, so a broken byte quarantines one record instead of failing the whole read."""
    if uri.startswith("s3://"):
        data = store.read_bytes(uri)
        if uri.endswith(".gz"):
            data = gzip.decompress(data)
        yield from data.decode("utf-8", "replace").splitlines()
        return
    opener = gzip.open if uri.endswith(".gz") else open
    with opener(uri, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            yield line.rstrip("\n")
