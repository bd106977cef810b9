"""lmforge's own document filters, written as datatrove blocks (``filter(doc) -> bool | (False, reason)``).

Thresholds are constructor arguments; ``None`` turns a rule off, as in datatrove's filters. The
quality heuristics themselves (Gopher, C4, FineWeb) are datatrove's and are built in
:mod:`components.curate.quality`.
"""

from __future__ import annotations

import re
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

WORDLISTS_DIR = Path(__file__).parent / "wordlists"
DEFAULT_WORDLIST = WORDLISTS_DIR / "nsfw_en.txt"


class LengthFilter(BaseFilter):
    """Drops documents outside ``[min_chars, max_chars]`` characters.

    Very short records (speaker tags, page numbers) teach a model little; very long ones are usually
    concatenation accidents and would dominate a shard.
    """

    name = "length"

    def __init__(self, min_chars: int | None = None, max_chars: int | None = None, exclusion_writer=None) -> None:
        super().__init__(exclusion_writer)
        self.min_chars, self.max_chars = min_chars, max_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        n = len(doc.text)
        if self.min_chars is not None and n < self.min_chars:
            return False, "too_short"
        if self.max_chars is not None and n > self.max_chars:
            return False, "too_long"
        return True


def load_wordlist(path: str | Path) -> list[str]:
    """Lower-cased entries of a word list: one word or phrase per line; blank lines and ``#`` comments skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [w.strip().lower() for w in lines if w.strip() and not w.lstrip().startswith("#")]


class WordListFilter(BaseFilter):
    """Drops documents with more than ``max_hits`` occurrences of listed words or phrases (toxicity/NSFW).

    C4 drops a page on a single hit of its "bad words" list (``max_hits=0``); "A Pretrainer's Guide to
    Training Data" shows such filters also remove text about the groups they mention, so the list
    and the tolerance are knobs. datatrove's ``C4BadWordsFilter`` downloads its lists at run time,
    which cannot work offline; this block takes any local list. Matching is whole-word and
    case-insensitive through one compiled alternation (longest entries first), so a document costs
    one regex scan whatever the list's size.
    """

    name = "toxicity"

    def __init__(self, words: list[str], max_hits: int = 0, exclusion_writer=None) -> None:
        super().__init__(exclusion_writer)
        if not words:
            raise ValueError("WordListFilter needs at least one word")
        self.max_hits = max_hits
        alternation = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
        self.pattern = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        for hits, _ in enumerate(self.pattern.finditer(doc.text), 1):
            if hits > self.max_hits:
                return False, "listed_words"
        return True
