"""Language identification offline, with lingua (its n-gram models ship inside the wheel).

datatrove's ``LanguageFilter`` needs a fastText model downloaded at run time, which cannot work here;
this block is the same rule on lingua: keep a document when its most likely language is in the
allow-list and lingua's confidence reaches ``threshold``. The detected ISO 639-1 code and score go
to ``metadata["language"]`` / ``metadata["language_score"]`` (the language histogram, the
great-expectations allow-list check).

Speed: lingua is fast only when asked a narrow question, so the detector (1) chooses among
``candidates`` only (the allow-list plus the languages a corpus plausibly mixes in; a language left
out cannot be detected, its text is scored against the candidates), (2) runs in low-accuracy mode
(trigrams only, ~0.15 ms per document; high accuracy is ~30× slower and gains little on paragraphs),
(3) reads the first ``max_chars`` characters. The detector is built lazily in each task because it
is a native object that cannot be pickled to worker processes or Ray nodes.
"""

from __future__ import annotations

from collections.abc import Sequence

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from components.common.errors import ConfigError


def iso_codes(codes: Sequence[str], key: str):
    """lingua ``IsoCode639_1`` members for ``codes``; :class:`ConfigError` naming ``key`` for an unknown one."""
    from lingua import IsoCode639_1

    out = []
    for code in codes:
        try:
            out.append(IsoCode639_1.from_str(code.strip().lower()))
        except ValueError as e:
            raise ConfigError(
                f"{key}: {code!r} is not an ISO 639-1 language code lingua knows (e.g. en, de, fr)"
            ) from e
    return out


class LinguaLanguageFilter(BaseFilter):
    name = "language"

    def __init__(
        self,
        allowed: Sequence[str],
        candidates: Sequence[str],
        threshold: float = 0.5,
        max_chars: int = 1000,
        exclusion_writer=None,
    ) -> None:
        super().__init__(exclusion_writer)
        self.allowed = {c.lower() for c in allowed}
        self.candidates = sorted({c.lower() for c in candidates} | self.allowed)
        iso_codes(self.candidates, "curate.language_candidates")  # fail at build time, not in a worker
        self.threshold, self.max_chars = threshold, max_chars
        self._detector = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_detector": None}

    @property
    def detector(self):
        if self._detector is None:
            from lingua import LanguageDetectorBuilder

            codes = iso_codes(self.candidates, "curate.language_candidates")
            self._detector = LanguageDetectorBuilder.from_iso_codes_639_1(*codes).with_low_accuracy_mode().build()
        return self._detector

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        best = self.detector.compute_language_confidence_values(doc.text[: self.max_chars])[0]
        if best.value <= 0:  # no letters lingua can score (digits, symbols, an unsupported script)
            return False, "language_unknown"
        code = best.language.iso_code_639_1.name.lower()
        doc.metadata["language"] = code
        doc.metadata["language_score"] = round(best.value, 4)
        if code not in self.allowed:
            return False, "language_not_allowed"
        if best.value < self.threshold:
            return False, "language_low_score"
        return True
