"""Where bad input goes instead of crashing the run or vanishing: ``quarantine/records.jsonl``.

Each row is ``{"file", "line", "reason", "raw"}`` with ``raw`` cut to 2 KB (enough to see what went
wrong without copying a multi-megabyte broken record). Reasons are stable snake_case tags
(``malformed_json``, ``invalid_utf8``, ``corrupt_file`` …) that also name the per-reason counts.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

RAW_LIMIT = 2048
CORRUPT_FILE = "corrupt_file"


class Quarantine:
    """Append-only JSONL of rejected input, with a count per reason. Use as a context manager."""

    def __init__(self, out_dir: Path, filename: str = "records.jsonl") -> None:
        """Rows go to ``out_dir/quarantine/<filename>``; datatrove tasks each write their own file."""
        self.path = Path(out_dir) / "quarantine" / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.counts: Counter[str] = Counter()
        self._fh = self.path.open("w", encoding="utf-8")

    def add(self, file: str, line: int, reason: str, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            # backslashreplace shows the offending bytes (\xff) instead of hiding them.
            raw = raw[: RAW_LIMIT * 4].decode("utf-8", errors="backslashreplace")
        row = {"file": file, "line": line, "reason": reason, "raw": raw[:RAW_LIMIT]}
        # ensure_ascii keeps lone surrogates writable (they cannot be encoded as UTF-8).
        self._fh.write(json.dumps(row) + "\n")
        self.counts[reason] += 1

    @property
    def records(self) -> int:
        """Quarantined records; a corrupt file is an event, not a record."""
        return sum(n for reason, n in self.counts.items() if reason != CORRUPT_FILE)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> Quarantine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def merge_quarantine(out_dir: Path, parts: list[Path]) -> Path:
    """Concatenate the tasks' quarantine files (in the order given) into ``quarantine/records.jsonl``."""
    path = Path(out_dir) / "quarantine" / "records.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for part in parts:
            if part.is_file():
                out.write(part.read_bytes())
    return path
