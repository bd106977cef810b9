"""Packed token shards: the contract between curation and every training or evaluation stage.

A curated dataset directory holds::

    manifest.json            dtype, tokenizer digest, per split: shards with token counts and sha256
    tokenizer/               the HF tokenizer the tokens were made with
    <split>/shard-00000.bin  flat little-endian token ids, documents separated by EOS

Shards are raw arrays rather than Arrow or Parquet because training reads random windows from them
with ``np.memmap``: no decoding, no copy, constant memory however large the corpus.
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


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


class ShardWriter:
    """Append token ids; rolls to a new shard file every ``shard_tokens`` tokens."""

    def __init__(self, root: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.root, self.split, self.dtype, self.shard_tokens = Path(root), split, dtype, shard_tokens
        (self.root / split).mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self.documents = 0
        self._buf: list[np.ndarray] = []
        self._buffered = 0

    def add(self, ids: Iterable[int]) -> None:
        arr = np.asarray(list(ids), dtype=self.dtype)
        self.documents += 1
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


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(f"{path}: not a curated dataset (no {MANIFEST})") from e


class TokenWindows:
    """Fixed-length windows over one split's shards, read lazily with ``np.memmap``.

    Window ``i`` covers tokens ``[i*length, (i+1)*length)`` of the split's concatenated stream; a
    window that straddles two shards is stitched together.
    """

    def __init__(self, root: str | Path, split: str, length: int, verify: bool = False) -> None:
        root = Path(root)
        manifest = read_manifest(root)
        if split not in manifest["splits"]:
            raise DataError(f"{root}: no split {split!r}; has {', '.join(manifest['splits'])}")
        dtype = np.dtype(manifest["dtype"])
        self.length = length
        self._maps, self._starts = [], []
        total = 0
        for shard in manifest["splits"][split]["shards"]:
            path = root / shard["path"]
            if verify and file_digest(path) != shard["sha256"]:
                raise DataError(f"{path}: checksum mismatch against {root / MANIFEST}")
            self._maps.append(np.memmap(path, dtype=dtype, mode="r"))
            self._starts.append(total)
            total += shard["tokens"]
        self.tokens = total
        if total < length:
            raise DataError(f"{root}/{split}: {total} tokens, fewer than one window of {length}")

    def __len__(self) -> int:
        return self.tokens // self.length

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start, end = i * self.length, (i + 1) * self.length
        parts = []
        k = bisect.bisect_right(self._starts, start) - 1
        while start < end:
            m = self._maps[k]
            lo = start - self._starts[k]
            take = min(end - start, len(m) - lo)
            parts.append(np.asarray(m[lo : lo + take], dtype=np.int64))
            start += take
            k += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def write_manifest(root: str | Path, *, dtype: np.dtype, tokenizer_digest: str, splits: dict, **extra) -> dict:
    """Write ``manifest.json`` for the splits a :class:`ShardWriter` produced (``close()`` results)."""
    manifest = {"dtype": np.dtype(dtype).name, "tokenizer_digest": tokenizer_digest, "splits": splits, **extra}
    (Path(root) / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
