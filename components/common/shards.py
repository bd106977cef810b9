"""Packed token shards: the contract between curation and every training or evaluation stage.

A curated dataset directory holds::

    manifest.json            dtype, tokenizer digest, per split: shards with token counts and sha256
    tokenizer/               the HF tokenizer the tokens were made with
    <split>/shard-00000.bin  flat little-endian token ids, documents separated by EOS
    <split>/quality.npz      optional: each document's token count and quality score, in packing order
                             (components/curate/score.py; listed as the split's "quality" entry)

Shards are raw arrays rather than Arrow or Parquet because training reads random windows from them:
from local disk with ``np.memmap`` (no decoding, no copy, constant memory however large the corpus),
from the object store with one ranged read per window (a byte offset is all it takes to find one).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from components.common.artifacts import file_digest
from components.common.errors import DataError

MANIFEST = "manifest.json"
QUALITY = "quality.npz"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


class ShardWriter:
    """Append token ids; rolls to a new shard file every ``shard_tokens`` tokens."""

    def __init__(self, root: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.root, self.split, self.dtype, self.shard_tokens = Path(root), split, dtype, shard_tokens
        (self.root / split).mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self.documents = 0
        self.doc_tokens: list[int] = []  # tokens (EOS included) of each document, in order
        self._buf: list[np.ndarray] = []
        self._buffered = 0

    def add(self, ids: Iterable[int]) -> None:
        arr = np.asarray(list(ids), dtype=self.dtype)
        self.documents += 1
        self.doc_tokens.append(len(arr))
        self._buf.append(arr)
        self._buffered += len(arr)
        while self._buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self._buf) if self._buf else np.zeros(0, self.dtype)
        head, rest = data[:n], data[n:]
        self._buf, self._buffered = ([rest] if len(rest) else []), len(rest)
        if not len(head):
            return
        rel = f"{self.split}/shard-{len(self.shards):05d}.bin"
        path = self.root / rel
        head.tofile(path)
        self.shards.append({"path": rel, "tokens": int(len(head)), "sha256": file_digest(path)})

    def close(self) -> dict:
        self._flush(self._buffered)
        return {"shards": self.shards, "tokens": sum(s["tokens"] for s in self.shards), "documents": self.documents}


def read_manifest(root: str | Path, *, store_options: dict | None = None) -> dict:
    """The manifest of a curated dataset: a local directory or a store URI (``file://``, ``s3://``)."""
    if is_uri(root):
        from components.common.storage import join, open_store

        uri = join(str(root), MANIFEST)
        store = open_store(uri, **(store_options or {}))
        if not store.exists(uri):
            raise DataError(f"{root}: not a curated dataset (no {MANIFEST})")
        return json.loads(store.read_text(uri))
    path = Path(root) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(f"{path}: not a curated dataset (no {MANIFEST})") from e


def write_quality(root: Path, split: str, doc_tokens: list[int], scores: list[float], rule: str) -> dict:
    """Write ``<split>/quality.npz`` (``tokens``: int64 per document, ``score``: float32); its manifest entry.

    The documents are in packing order, so document ``i`` covers tokens ``[sum(tokens[:i]), sum(tokens[:i+1]))``
    of the split's stream: a window's score follows from its token range alone.
    """
    if len(doc_tokens) != len(scores):
        raise ValueError(f"{len(doc_tokens)} documents but {len(scores)} scores")
    path = Path(root) / split / QUALITY
    with path.open("wb") as fh:
        np.savez(fh, tokens=np.asarray(doc_tokens, np.int64), score=np.asarray(scores, np.float32))
    values = np.asarray(scores, np.float64)
    return {
        "path": f"{split}/{QUALITY}",
        "sha256": file_digest(path),
        "documents": len(scores),
        "rule": rule,
        "mean": round(float(values.mean()), 4) if len(values) else 0.0,
        "quantiles": [round(float(q), 4) for q in np.quantile(values, [0.1, 0.5, 0.9])] if len(values) else [],
    }


def read_quality(source: str | Path, split: str, *, store_options: dict | None = None) -> tuple | None:
    """``(token count, score)`` arrays of a split's documents in packing order; ``None`` if it has none."""
    entry = read_manifest(source, store_options=store_options)["splits"].get(split, {}).get("quality")
    if not entry:
        return None
    if is_uri(source) and not str(source).startswith("file://"):
        import io

        from components.common.storage import join, open_store

        uri = join(str(source), entry["path"])
        data = io.BytesIO(open_store(uri, **(store_options or {})).read_bytes(uri))
    else:
        data = Path(str(source).removeprefix("file://")) / entry["path"]
    with np.load(data) as npz:
        return npz["tokens"], npz["score"]


def is_uri(source: str | Path) -> bool:
    return isinstance(source, str) and "://" in source


class _MappedShard:
    """A shard on this machine's disk, read through ``np.memmap`` (no copy, constant memory)."""

    remote = False

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self._map = np.memmap(path, dtype=dtype, mode="r")

    def read(self, start: int, count: int) -> np.ndarray:
        return np.asarray(self._map[start : start + count], dtype=np.int64)


class _RangedShard:
    """A shard in the object store, read window by window with ranged GETs (streamed; nothing cached).

    The store client is opened lazily, in the process that reads: a worker receives this object by
    pickling, and an S3 client (sockets, a connection pool) must not cross processes.
    """

    remote = True

    def __init__(self, uri: str, dtype: np.dtype, store_options: dict) -> None:
        self.uri, self.dtype, self.store_options = uri, dtype, store_options
        self._store = None

    def read(self, start: int, count: int) -> np.ndarray:
        if self._store is None:
            from components.common.storage import open_store

            self._store = open_store(self.uri, **self.store_options)
        size = self.dtype.itemsize
        data = self._store.read_range(self.uri, start * size, count * size)
        return np.frombuffer(data, dtype=self.dtype).astype(np.int64)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}


class TokenWindows:
    """Fixed-length windows over one split's shards, wherever the dataset lives.

    Window ``i`` covers tokens ``[i*length, (i+1)*length)`` of the split's concatenated stream; a
    window that straddles two shards is stitched together. ``source`` is a local dataset directory or
    a store URI. ``file://`` shards are memory-mapped in place; ``s3://`` shards are either streamed
    (each window one ranged GET: a training step needs a few hundred KB, never the whole corpus) or,
    with ``cache_dir``, downloaded once per node into that directory (checked against the manifest's
    sha256) and memory-mapped: the better choice when a node reads the same shards many times.
    """

    def __init__(
        self,
        source: str | Path,
        split: str,
        length: int,
        *,
        verify: bool = False,
        store_options: dict | None = None,
        cache_dir: str | Path = "",
    ) -> None:
        store_options = dict(store_options or {})
        manifest = read_manifest(source, store_options=store_options)
        if split not in manifest["splits"]:
            raise DataError(f"{source}: no split {split!r}; has {', '.join(manifest['splits'])}")
        dtype = np.dtype(manifest["dtype"])
        self.source, self.length = str(source), length
        self._shards: list[_MappedShard | _RangedShard] = []
        self._starts: list[int] = []
        self._sizes: list[int] = []
        total = 0
        for shard in manifest["splits"][split]["shards"]:
            self._shards.append(_open_shard(source, shard, dtype, verify, store_options, cache_dir))
            self._starts.append(total)
            self._sizes.append(shard["tokens"])
            total += shard["tokens"]
        self.tokens = total
        if total < length:
            raise DataError(f"{source}/{split}: {total} tokens, fewer than one window of {length}")

    @property
    def remote(self) -> bool:
        """Whether reading a window costs a network round trip (worth doing several at once)."""
        return any(s.remote for s in self._shards)

    def __len__(self) -> int:
        return self.tokens // self.length

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start, end = i * self.length, (i + 1) * self.length
        parts = []
        k = bisect.bisect_right(self._starts, start) - 1
        while start < end:
            lo = start - self._starts[k]
            take = min(end - start, self._sizes[k] - lo)
            parts.append(self._shards[k].read(lo, take))
            start += take
            k += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _open_shard(
    source: str | Path, shard: dict, dtype: np.dtype, verify: bool, store_options: dict, cache_dir: str | Path
) -> _MappedShard | _RangedShard:
    if not is_uri(source) or str(source).startswith("file://"):
        root = Path(str(source).removeprefix("file://"))
        path = root / shard["path"]
        if verify and file_digest(path) != shard["sha256"]:
            raise DataError(f"{path}: checksum mismatch against {root / MANIFEST}")
        return _MappedShard(path, dtype)
    from components.common.storage import join

    uri = join(str(source), shard["path"])
    if cache_dir:
        from components.common.node_cache import cached_object
        from components.common.storage import open_store

        path = cached_object(open_store(uri, **store_options), uri, Path(cache_dir), sha256=shard["sha256"])
        return _MappedShard(path, dtype)
    return _RangedShard(uri, dtype, store_options)


def write_manifest(root: str | Path, *, dtype: np.dtype, tokenizer_digest: str, splits: dict, **extra) -> dict:
    """Write ``manifest.json`` for the splits a :class:`ShardWriter` produced (``close()`` results)."""
    manifest = {"dtype": np.dtype(dtype).name, "tokenizer_digest": tokenizer_digest, "splits": splits, **extra}
    (Path(root) / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
