"""Document filters: one small class each, datatrove-shaped (see :mod:`components.curate.base`).

Thresholds are constructor arguments; ``None`` turns a rule off, as in datatrove's filters.
"""

from __future__ import annotations

from components.curate.base import BaseFilter
from components.curate.document import Document


class LengthFilter(BaseFilter):
    """Drops documents outside ``[min_chars, max_chars]`` characters.

    Very short records (speaker tags, page numbers) teach a model little; very long ones are usually
    concatenation accidents and would dominate a shard.
    """

    name = "length"
    reasons = ("too_short", "too_long")

    def __init__(self, min_chars: int | None = None, max_chars: int | None = None) -> None:
        super().__init__()
        self.min_chars, self.max_chars = min_chars, max_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        n = len(doc.text)
        if self.min_chars is not None and n < self.min_chars:
            return False, "too_short"
        if self.max_chars is not None and n > self.max_chars:
            return False, "too_long"
        return True
