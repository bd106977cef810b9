"""Small builders for curate tests: raw input files with known defects."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from components.curate.quarantine import Quarantine
from components.curate.readers import SourceReader


def write_jsonl(path: Path, rows: list, compress: bool = False) -> Path:
    """``rows`` are dicts (serialized) or raw ``bytes`` lines written as-is."""
    data = b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def read_all(paths: list[Path], out_dir: Path, text_field: str = "text"):
    """Run the reader over ``paths``; returns (documents, quarantine rows, reader, quarantine)."""
    with Quarantine(out_dir) as q:
        reader = SourceReader(text_field, q)
        docs = list(reader.run([str(p) for p in paths]))
    rows = [json.loads(line) for line in q.path.read_text().splitlines()]
    return docs, rows, reader, q


def read_documents(out_dir: Path) -> list[dict]:
    """The rows of a curated dataset's ``documents.jsonl.gz``."""
    with gzip.open(out_dir / "documents.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]
