"""The two kinds of curation block and the counting they share, shaped after datatrove.

A block subclasses :class:`BaseFilter` and writes only ``filter(doc) -> bool | (bool, reason)``
(True keeps), or :class:`BaseFormatter` and writes only ``format(text) -> str``. The base ``run()``
streams documents through and keeps the counts (``in``, ``kept``, ``dropped`` per reason) that become
``dropped_<reason>`` metrics. Reasons are stable snake_case tags (``too_short``); a bare ``False``
counts under the block's ``name``. Porting a block to datatrove means changing its base class only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from components.curate.document import Document


@dataclass
class StepStats:
    name: str
    records_in: int = 0
    kept: int = 0
    modified: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict:
        out = {"in": self.records_in, "kept": self.kept, "dropped": dict(self.dropped)}
        if self.modified:
            out["modified"] = self.modified
        return out


class BaseFilter:
    """Keeps or drops whole documents."""

    name = "filter"
    reasons: tuple[str, ...] = ()  # every reason filter() may return: stable metric keys

    def __init__(self) -> None:
        self.stats = StepStats(self.name)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        raise NotImplementedError

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:
        for doc in docs:
            self.stats.records_in += 1
            verdict = self.filter(doc)
            keep, reason = verdict if isinstance(verdict, tuple) else (verdict, self.name)
            if keep:
                self.stats.kept += 1
                yield doc
            else:
                self.stats.dropped[reason] += 1


class BaseFormatter:
    """Rewrites each document's text; never drops one (an emptied text is the length filter's call)."""

    name = "formatter"

    def __init__(self) -> None:
        self.stats = StepStats(self.name)

    def format(self, text: str) -> str:
        raise NotImplementedError

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:
        for doc in docs:
            self.stats.records_in += 1
            text = self.format(doc.text)
            if text != doc.text:
                self.stats.modified += 1
                doc.text = text
            self.stats.kept += 1
            yield doc
