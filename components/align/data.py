"""SFT pairs read from JSONL, with bad lines quarantined instead of crashing the stage.

A line becomes a pair when it parses as a JSON object whose prompt and response fields are non-empty
strings. Any other line is quarantined: counted, and written to ``quarantine.jsonl`` with its file,
line number and reason (``invalid_json``, ``not_an_object``, ``missing_field:<name>``,
``not_a_string:<name>``, ``empty_field:<name>``), so a bad record is never silently dropped. Only if
no line at all is usable does the stage fail, with a :class:`DataError` naming the files.

The held-out split is a seeded shuffle of the valid pairs, so the same seed and data always hold
out the same examples (and so "held-out answer loss" compares like with like across runs).
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from components.common.errors import DataError
from components.common.sources import resolve_source


@dataclass(frozen=True)
class SftPair:
    prompt: str
    response: str
    file: str
    line: int


@dataclass(frozen=True)
class Quarantined:
    file: str
    line: int
    reason: str
    excerpt: str


def _lines(uri: str, store) -> Iterator[str]:
    if uri.startswith("s3://"):
        data = store.read_bytes(uri)
        text = (
            gzip.decompress(data).decode("utf-8", "replace") if uri.endswith(".gz") else data.decode("utf-8", "replace")
        )
        yield from text.splitlines()
        return
    opener = gzip.open if uri.endswith(".gz") else open
    with opener(uri, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            yield line.rstrip("\n")


def parse_line(text: str, prompt_field: str, response_field: str) -> tuple[str, str] | str:
    """``(prompt, response)`` of one JSONL line, or the reason it cannot be used."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return "invalid_json"
    if not isinstance(record, dict):
        return "not_an_object"
    values = []
    for name in (prompt_field, response_field):
        if name not in record:
            return f"missing_field:{name}"
        if not isinstance(record[name], str):
            return f"not_a_string:{name}"
        if not record[name].strip():
            return f"empty_field:{name}"
        values.append(record[name])
    return values[0], values[1]


def read_pairs(
    source: str, prompt_field: str, response_field: str, *, max_pairs: int = 0, store=None
) -> tuple[list[SftPair], list[Quarantined]]:
    """Valid pairs (the first ``max_pairs`` in file order, 0 = all) and the quarantined lines.

    Quarantine covers every line read until ``max_pairs`` pairs were found. Raises ``DataError`` if
    the source yields no valid pair.
    """
    files = resolve_source(source, store)
    pairs: list[SftPair] = []
    bad: list[Quarantined] = []
    for uri in files:
        for number, text in enumerate(_lines(uri, store), start=1):
            if not text.strip():
                continue  # blank lines separate nothing in JSONL but are common at file ends
            parsed = parse_line(text, prompt_field, response_field)
            if isinstance(parsed, str):
                bad.append(Quarantined(uri, number, parsed, text[:200]))
                continue
            pairs.append(SftPair(parsed[0], parsed[1], uri, number))
            if max_pairs and len(pairs) >= max_pairs:
                return pairs, bad
    if not pairs:
        reasons = sorted({q.reason for q in bad})
        raise DataError(
            f"{source}: no usable SFT pair in {', '.join(files)} ({len(bad)} lines quarantined: {', '.join(reasons) or 'file empty'}); "
            f"each line must be a JSON object with string fields {prompt_field!r} and {response_field!r} "
            "(set align.prompt_field / align.response_field)"
        )
    return pairs, bad


def write_quarantine(path: Path, bad: list[Quarantined]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for q in bad:
            f.write(json.dumps({"file": q.file, "line": q.line, "reason": q.reason, "excerpt": q.excerpt}) + "\n")


def split_heldout(pairs: list[SftPair], fraction: float, seed: int) -> tuple[list[SftPair], list[SftPair]]:
    """``(train, heldout)``: a seeded shuffle, at least one pair on each side."""
    if len(pairs) < 2:
        raise DataError(f"SFT needs at least 2 valid pairs (one to train, one held out), got {len(pairs)}")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_heldout = min(len(pairs) - 1, max(1, round(len(pairs) * fraction)))
    heldout = sorted(order[:n_heldout])
    train = sorted(order[n_heldout:])
    return [pairs[i] for i in train], [pairs[i] for i in heldout]
