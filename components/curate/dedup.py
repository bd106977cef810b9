"""Exact deduplication on the hash of the normalized text; the first occurrence wins.

Runs after normalization, so texts differing only in Unicode spelling or stray control characters
count as duplicates. Sets ``doc.id`` to the content hash, which later names the document in
``documents.jsonl.gz`` and decides its split. Memory is 16 bytes of digest per kept document.
"""

from __future__ import annotations

from components.curate.base import BaseFilter
from components.curate.document import Document, content_hash


class ExactDedupFilter(BaseFilter):
    name = "dedup"
    reasons = ("duplicate",)

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[bytes] = set()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        doc.id = content_hash(doc.text)
        key = bytes.fromhex(doc.id)
        if key in self._seen:
            return False, "duplicate"
        self._seen.add(key)
        return True
