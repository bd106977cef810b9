"""SFT records read from JSONL, with bad lines quarantined instead of crashing the stage.

Two record shapes, mixed freely in one file:

* prompt/response: a JSON object whose prompt and response fields (``align.prompt_field``,
  ``align.response_field``) are non-empty strings;
* chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``, multi-turn,
  ending with an assistant turn; the loss falls on every assistant turn (trl's assistant-only loss
  through the ``{% generation %}`` block of the chat template, :mod:`.chat`).

Any other line is quarantined: counted, and written to ``quarantine.jsonl`` with its file, line
number and reason (``invalid_json``, ``not_an_object``, ``missing_field:<name>``,
``not_a_string:<name>``, ``empty_field:<name>``, ``bad_messages:<why>``), so a bad record is never
silently dropped. Only if
no line at all is usable does the stage fail, with a :class:`DataError` naming the files.

The held-out split is a seeded shuffle of the valid pairs, so the same seed and data always hold
out the same examples (and so "held-out answer loss" compares like with like across runs).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from components.common.errors import DataError
from components.common.sources import read_lines, resolve_source

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class SftPair:
    """One SFT record. For a chat record ``messages`` holds every turn, ``prompt`` the turns before the
    last assistant turn rendered as text (for logs and samples) and ``response`` that last turn."""

    prompt: str
    response: str
    file: str
    line: int
    messages: tuple[tuple[str, str], ...] = ()

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)

    def turns(self) -> list[dict[str, str]]:
        """Every turn as chat messages (a prompt/response pair is one user and one assistant turn)."""
        if self.messages:
            return [{"role": r, "content": c} for r, c in self.messages]
        return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.response}]


@dataclass(frozen=True)
class Quarantined:
    file: str
    line: int
    reason: str
    excerpt: str


def parse_messages(messages) -> tuple[tuple[str, str], ...] | str:
    """The turns of a chat record as ``((role, content), ...)``, or the reason they cannot be used."""
    if not isinstance(messages, list) or not messages:
        return "bad_messages:not_a_list"
    turns = []
    for turn in messages:
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            return "bad_messages:turn_without_content"
        if turn.get("role") not in ROLES:
            return "bad_messages:unknown_role"
        if not turn["content"].strip():
            return "bad_messages:empty_turn"
        turns.append((turn["role"], turn["content"]))
    if turns[-1][0] != "assistant":
        return "bad_messages:last_turn_not_assistant"
    return tuple(turns)


def parse_line(text: str, prompt_field: str, response_field: str) -> tuple | str:
    """``(prompt, response)`` or ``(prompt, response, turns)`` (chat record) of one JSONL line, or the
    reason it cannot be used."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return "invalid_json"
    if not isinstance(record, dict):
        return "not_an_object"
    if "messages" in record:
        turns = parse_messages(record["messages"])
        if isinstance(turns, str):
            return turns
        prompt = "\n".join(f"{role}: {content}" for role, content in turns[:-1])
        return prompt, turns[-1][1], turns
    values = []
    for name in (prompt_field, response_field):
        if name not in record:
            return f"missing_field:{name}"
        if not isinstance(record[name], str):
            return f"not_a_string:{name}"
        if not record[name].strip():
            return f"empty_field:{name}"
        values.append(record[name])
    return values[0], values[1]


def read_pairs(
    source: str, prompt_field: str, response_field: str, *, max_pairs: int = 0, store=None
) -> tuple[list[SftPair], list[Quarantined]]:
    """Valid pairs (the first ``max_pairs`` in file order, 0 = all) and the quarantined lines.

    Quarantine covers every line read until ``max_pairs`` pairs were found. Raises ``DataError`` if
    the source yields no valid pair.
    """
    files = resolve_source(source, store)
    pairs: list[SftPair] = []
    bad: list[Quarantined] = []
    for uri in files:
        for number, text in enumerate(read_lines(uri, store), start=1):
            if not text.strip():
                continue  # blank lines separate nothing in JSONL but are common at file ends
            parsed = parse_line(text, prompt_field, response_field)
            if isinstance(parsed, str):
                bad.append(Quarantined(uri, number, parsed, text[:200]))
                continue
            pairs.append(SftPair(parsed[0], parsed[1], uri, number, *parsed[2:]))
            if max_pairs and len(pairs) >= max_pairs:
                return pairs, bad
    if not pairs:
        reasons = sorted({q.reason for q in bad})
        raise DataError(
            f"{source}: no usable SFT pair in {', '.join(files)} ({len(bad)} lines quarantined: {', '.join(reasons) or 'file empty'}); "
            f"each line must be a JSON object with string fields {prompt_field!r} and {response_field!r} "
            '(set align.prompt_field / align.response_field) or chat turns {"messages": [{"role", "content"}, ...]}'
        )
    return pairs, bad


def write_quarantine(path: Path, bad: list[Quarantined]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for q in bad:
            f.write(json.dumps({"file": q.file, "line": q.line, "reason": q.reason, "excerpt": q.excerpt}) + "\n")


def split_heldout(pairs: list[SftPair], fraction: float, seed: int) -> tuple[list[SftPair], list[SftPair]]:
    """``(train, heldout)``: a seeded shuffle, at least one pair on each side."""
    if len(pairs) < 2:
        raise DataError(f"SFT needs at least 2 valid pairs (one to train, one held out), got {len(pairs)}")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_heldout = min(len(pairs) - 1, max(1, round(len(pairs) * fraction)))
    heldout = sorted(order[:n_heldout])
    train = sorted(order[n_heldout:])
    return [pairs[i] for i in train], [pairs[i] for i in heldout]
