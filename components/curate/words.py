"""The word and sentence splitter every datatrove block of lmforge uses: regular expressions, offline.

datatrove's filters, MinHash and decontamination split text with the word tokenizer assigned to a
language. For English, datatrove 0.10 assigns spaCy (not a dependency of lmforge, and a large one),
and the alternative, NLTK's punkt, needs data files that are not in the nltk wheel and cannot be
downloaded at run time here. Passing a :class:`datatrove.utils.word_tokenizers.WordTokenizer` instance
as a block's ``language`` is datatrove's own extension point; this one needs no data, is several
times faster than either, and splits words the way those tokenizers do for space-separated scripts
(words, with punctuation marks as tokens of their own). Scripts written without spaces (Chinese,
Japanese, Thai) would need a real segmenter: keep them out of ``curate.languages``.

One instance is shared by all blocks of a pipeline: datatrove caches ``split_into_words`` per
(text, tokenizer), so the Gopher quality and repetition filters split each text once between them.
"""

from __future__ import annotations

import re

from datatrove.utils.word_tokenizers import WordTokenizer

# A word (letters/digits, with inner apostrophes: "don't", "o'er") or one punctuation/symbol character.
WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
# A sentence ends at terminal punctuation (with closing quotes/brackets) followed by space or the end.
SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)")


class RegexWordTokenizer(WordTokenizer):
    def __init__(self) -> None:
        super().__init__(language="regex")

    # Stateless, so all instances are interchangeable: equal and equally hashed, which lets caches
    # keyed by tokenizer (datatrove's word splits, the decontamination index) hit across copies.
    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self).__qualname__)

    def word_tokenize(self, text: str) -> list[str]:
        return WORD.findall(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for m in SENTENCE_END.finditer(text):
            if text[start : m.end()].strip():
                spans.append((start, m.end()))
            start = m.end()
        if text[start:].strip():
            spans.append((start, len(text)))
        return spans

    def sent_tokenize(self, text: str) -> list[str]:
        return [text[a:b].strip() for a, b in self.span_tokenize(text)]
