"""The unit every curation block passes along: datatrove's ``Document`` plus where it came from.

lmforge's blocks are datatrove blocks, so a record is a :class:`datatrove.data.Document` (text, id,
metadata). The origin (file URI and 1-based line or row where the record starts) lives in
``metadata["file"]`` / ``metadata["line"]`` so it survives every datatrove writer and reader; the
``file`` and ``line`` properties are shorthands. Any curated token can be walked back to its raw line.
"""

from __future__ import annotations

import hashlib

from datatrove.data import Document as _DatatroveDocument


class Document(_DatatroveDocument):
    """``Document(text, file, line, id="")``: a datatrove document with its origin in the metadata."""

    def __init__(self, text: str, file: str, line: int, id: str = "", metadata: dict | None = None) -> None:
        super().__init__(text=text, id=id, metadata={"file": file, "line": line, **(metadata or {})})

    @property
    def file(self) -> str:
        return self.metadata["file"]

    @property
    def line(self) -> int:
        return self.metadata["line"]


def content_hash(text: str) -> str:
    """32 hex digits of BLAKE2b over the UTF-8 text: the document id and the exact-dedup key.

    128 bits make an accidental collision (a distinct record dropped as a duplicate) negligible even
    for billions of records; BLAKE2b is faster than SHA-256 in CPython.
    """
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()
