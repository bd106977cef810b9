"""What lmforge adds to datatrove's blocks: counted formatters, dropped-document examples, step counts.

Filters are plain :class:`datatrove.pipeline.filters.base_filter.BaseFilter` subclasses writing only
``filter(doc) -> bool | (False, reason)``; datatrove's ``run()`` counts ``total`` / ``forwarded`` /
``dropped`` / ``dropped_<reason>`` in the block's ``stats`` and hands each dropped document to its
``exclusion_writer``. Two gaps are filled here:

- datatrove's formatters do not say how many documents they changed: :class:`CountingFormatter`
  counts ``modified`` (and any ``modified_<kind>`` a subclass adds);
- the data card wants a few dropped documents per rule, not a copy of every dropped one:
  :class:`ExampleSink` is an exclusion writer that keeps the first few per reason and per task.

:func:`step_counts` turns a block's datatrove stats (live or from ``stats.json``) into the
``{"input", "kept", "dropped", "rules", "modified"}`` entry of the curation report.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.utils.typeshelper import StatHints

EXAMPLES_PER_RULE = 3
EXAMPLE_CHARS = 300


class CountingFormatter(BaseFormatter):
    """A datatrove formatter that also counts the documents whose text it changed (``modified``)."""

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update(StatHints.total)
            with self.track_time():
                text = self.format(doc.text)
            if text != doc.text:
                self.stat_update("modified")
                doc.text = text
            yield doc


class ExampleSink:
    """A datatrove ``exclusion_writer`` that keeps up to 3 dropped texts (≤ 300 chars) per reason.

    datatrove's filters call ``with writer: writer.write(doc, rank)`` with ``doc.metadata["filter_reason"]``
    set; on exit the examples of this task go to ``<folder>/<rank>-<step>.json`` (tasks may run in other
    processes or on other Ray nodes, so files, not memory, carry them back). Plain attributes only, so
    the sink deep-copies and pickles with the pipeline.
    """

    def __init__(self, folder: str | Path, step: str) -> None:
        self.folder, self.step = str(folder), step
        self._examples: dict[str, list[str]] = defaultdict(list)
        self._rank = 0

    def __enter__(self) -> ExampleSink:
        self._examples = defaultdict(list)
        return self

    def write(self, doc: Document, rank: int = 0, **_: object) -> None:
        self._rank = rank
        kept = self._examples[doc.metadata.get("filter_reason") or self.step]
        if len(kept) < EXAMPLES_PER_RULE:
            kept.append(doc.text[:EXAMPLE_CHARS])

    def __exit__(self, *exc: object) -> None:
        if self._examples:
            path = Path(self.folder) / f"{self._rank:05d}-{self.step}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self._examples, ensure_ascii=False))


def merge_examples(folder: Path) -> dict[str, list[str]]:
    """All tasks' examples, ``{reason: [text, ...]}`` with at most 3 per reason, in task order."""
    merged: dict[str, list[str]] = defaultdict(list)
    for path in sorted(Path(folder).glob("*.json")):
        for reason, texts in json.loads(path.read_text()).items():
            merged[reason].extend(texts[: EXAMPLES_PER_RULE - len(merged[reason])])
    return dict(merged)


def _total(value: float | dict) -> int:
    """A datatrove metric as saved in ``stats.json``: a bare number, or a dict with its ``total``."""
    return int(value["total"] if isinstance(value, dict) else value)


def stats_dict(step_or_stats) -> dict[str, int]:
    """``{metric: total}`` from a live block (``block.stats``) or one entry of a ``stats.json``."""
    if isinstance(step_or_stats, dict):
        raw = step_or_stats.get("stats", step_or_stats)
        return {k: _total(v) for k, v in raw.items()}
    return {k: int(v.total) for k, v in step_or_stats.stats.stats.items()}


def step_counts(step_or_stats, *, drops: bool = True) -> dict:
    """The report entry of one block: ``{"input", "kept", "dropped", "rules", "modified"}``.

    ``rules`` maps each drop reason to its count; ``modified`` maps ``"all"`` and each kind a formatter
    reports (``modified_email`` → ``email``) to the number of documents changed. ``drops=False`` is for
    formatters, which never drop (datatrove counts no ``forwarded`` for them).
    """
    s = stats_dict(step_or_stats)
    n_in = s.get(StatHints.total, 0)
    kept = s.get(StatHints.forwarded, 0) if drops else n_in
    rules = {k.removeprefix("dropped_"): v for k, v in s.items() if k.startswith("dropped_")}
    modified = {k.removeprefix("modified_"): v for k, v in s.items() if k.startswith("modified_")}
    if s.get("modified"):
        modified["all"] = s["modified"]
    return {"input": n_in, "kept": kept, "dropped": n_in - kept, "rules": rules, "modified": modified}
