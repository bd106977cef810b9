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


SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"


def wikitext_paragraphs(n: int, min_chars: int = 600) -> list[str]:
    """``n`` real Wikipedia paragraphs (WikiText-2 test split from ../shared/data), long enough for MinHash."""
    lines = (SHARED / "wikitext2" / "test.txt").read_text(encoding="utf-8").splitlines()
    paras = [ln.strip() for ln in lines if len(ln.strip()) >= min_chars and not ln.strip().startswith("=")]
    assert len(paras) >= n, f"only {len(paras)} paragraphs of >= {min_chars} chars"
    return paras[:n]


def near_copy(text: str, rng, edit_fraction: float = 0.02) -> str:
    """``text`` with about ``edit_fraction`` of its words replaced, as a scraper's copy with small edits."""
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, int(len(words) * edit_fraction))):
        words[i] = rng.choice(["very", "also", "indeed", "often", "2019", "new", "local"])
    return " ".join(words)
