"""Text repair and normalization: readable text, one canonical spelling, no invisible controls.

- :class:`TextRepair` is datatrove's :class:`~datatrove.pipeline.formatters.ftfy.FTFYFormatter`
  (ftfy with its conservative defaults: fix mojibake such as ``cafÃ©`` → ``café``, HTML entities,
  terminal escapes, C1 controls; no quote uncurling or width folding, which would make a model blind
  to real-world spellings), counting the documents it changed.
- :class:`UnicodeNormalizer`: NFC by default so that "é" typed as one code point or as "e" + combining
  accent tokenizes (and deduplicates) the same. Control characters (Unicode category Cc: C0, DEL, C1)
  are removed except newline and tab, which carry layout; this also turns CRLF line ends into LF.
"""

from __future__ import annotations

import re
import unicodedata

from datatrove.pipeline.formatters import FTFYFormatter

from components.curate.base import CountingFormatter

# Category Cc is exactly U+0000–U+001F and U+007F–U+009F; \t (09) and \n (0A) are left out on purpose.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class TextRepair(CountingFormatter, FTFYFormatter):
    name = "repair"


class UnicodeNormalizer(CountingFormatter):
    name = "normalize"

    def __init__(self, form: str = "NFC") -> None:
        """``form``: NFC, NFKC, NFD, NFKD, or ``"none"`` to only strip control characters."""
        super().__init__()
        self.form = None if form == "none" else form

    def format(self, text: str) -> str:
        if self.form and not unicodedata.is_normalized(self.form, text):
            text = unicodedata.normalize(self.form, text)
        return CONTROL_CHARS.sub("", text)
