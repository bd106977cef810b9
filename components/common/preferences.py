"""Preference pairs ``{prompt, chosen, rejected}`` from HH-RLHF dialogues or plain JSONL.

Both alignment (reward models, DPO) and evaluation (preference accuracy) read pairs, so the reader and
the train/held-out split live here, below both stages: a pair's side is decided by its content
(:mod:`components.common.splits`), so a held-out pair never reaches preference training.

Accepted records (one JSON object per line, ``.jsonl`` or ``.jsonl.gz``):

* HH-RLHF: ``{"chosen": dialogue, "rejected": dialogue}`` where each dialogue is
  ``"\\n\\nHuman: … \\n\\nAssistant: …"`` turns. The two dialogues share everything up to the last
  ``"\\n\\nAssistant:"``; that shared text is the prompt, and what follows is each response.
* Plain: ``{"prompt": str, "chosen": str, "rejected": str}``.

A line that is neither is quarantined with its file, line and reason (``invalid_json``,
``not_an_object``, ``missing_field:<name>``, ``not_a_string:<name>``, ``empty_field:<name>``,
``identical_responses``, ``no_assistant_turn``, ``prompts_differ``), never dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from components.common.errors import DataError
from components.common.sources import read_lines, resolve_source
from components.common.splits import is_heldout

ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    file: str
    line: int

    @property
    def identity(self) -> str:
        """The text that fixes the pair's split: prompt and both responses."""
        return f"{self.prompt}\x00{self.chosen}\x00{self.rejected}"


@dataclass(frozen=True)
class QuarantinedPair:
    file: str
    line: int
    reason: str
    excerpt: str


def split_dialogue(dialogue: str) -> tuple[str, str] | None:
    """``(prompt, response)`` of an HH-RLHF dialogue: the text up to and including the last
    ``"\\n\\nAssistant:"``, and the reply after it (stripped); ``None`` without an assistant turn."""
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        return None
    head = cut + len(ASSISTANT)
    return dialogue[:head], dialogue[head:].strip()


def parse_record(text: str) -> tuple[str, str, str] | str:
    """``(prompt, chosen, rejected)`` of one JSONL line, or the reason it cannot be used."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return "invalid_json"
    if not isinstance(record, dict):
        return "not_an_object"
    fields = ("prompt", "chosen", "rejected") if "prompt" in record else ("chosen", "rejected")
    for name in fields:
        if name not in record:
            return f"missing_field:{name}"
        if not isinstance(record[name], str):
            return f"not_a_string:{name}"
        if not record[name].strip():
            return f"empty_field:{name}"
    if "prompt" in record:
        prompt, chosen, rejected = record["prompt"], record["chosen"].strip(), record["rejected"].strip()
    else:
        chosen_parts, rejected_parts = split_dialogue(record["chosen"]), split_dialogue(record["rejected"])
        if chosen_parts is None or rejected_parts is None:
            return "no_assistant_turn"
        if chosen_parts[0] != rejected_parts[0]:
            return "prompts_differ"
        prompt, chosen, rejected = chosen_parts[0], chosen_parts[1], rejected_parts[1]
        if not chosen:
            return "empty_field:chosen"
        if not rejected:
            return "empty_field:rejected"
    if chosen == rejected:
        return "identical_responses"
    return prompt, chosen, rejected


def read_preferences(source: str, *, store=None) -> tuple[list[PreferencePair], list[QuarantinedPair]]:
    """Every usable pair of ``source`` (a file, directory or s3:// prefix) in file order, and the
    quarantined lines. Raises :class:`DataError` naming the source when no pair is usable."""
    files = resolve_source(source, store)
    pairs: list[PreferencePair] = []
    bad: list[QuarantinedPair] = []
    for uri in files:
        for number, text in enumerate(read_lines(uri, store), start=1):
            if not text.strip():
                continue
            parsed = parse_record(text)
            if isinstance(parsed, str):
                bad.append(QuarantinedPair(uri, number, parsed, text[:200]))
            else:
                pairs.append(PreferencePair(*parsed, file=uri, line=number))
    if not pairs:
        reasons = sorted({q.reason for q in bad})
        raise DataError(
            f"{source}: no usable preference pair in {', '.join(files)} ({len(bad)} lines quarantined: "
            f"{', '.join(reasons) or 'file empty'}); each line must be HH-RLHF "
            '{"chosen": dialogue, "rejected": dialogue} or {"prompt", "chosen", "rejected"} strings'
        )
    return pairs, bad


def split_preferences(
    pairs: list[PreferencePair], heldout_fraction: float
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """``(train, heldout)`` by content (see :mod:`components.common.splits`), order kept."""
    train, heldout = [], []
    for pair in pairs:
        (heldout if is_heldout(pair.identity, heldout_fraction) else train).append(pair)
    return train, heldout
