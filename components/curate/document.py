"""The unit every curation block passes along: one record of text and where it came from.

Shaped like datatrove's ``Document`` (text, id, metadata) so blocks port to datatrove unchanged; the
origin (file URI and 1-based line where the record starts) is kept so any curated token can be walked
back to the raw line that produced it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(slots=True)
class Document:
    text: str
    file: str
    line: int
    id: str = ""


def content_hash(text: str) -> str:
    """32 hex digits of BLAKE2b over the UTF-8 text: the document id and the exact-dedup key.

    128 bits make an accidental collision (a distinct record dropped as a duplicate) negligible even
    for billions of records; BLAKE2b is faster than SHA-256 in CPython.
    """
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()
