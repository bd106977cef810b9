"""Preference pairs as the conversational datasets trl's preference trainers read.

The pairs themselves (HH-RLHF dialogues or plain ``{prompt, chosen, rejected}`` JSONL, quarantine,
content-keyed held-out split) come from :mod:`components.common.preferences`, shared with evaluation.
Here they become chat turns, so they are rendered by the same template as SFT data
(:mod:`components.align.chat`): an HH-RLHF prompt ``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:"``
becomes ``user a, assistant b, user c``; a plain prompt becomes one user turn.

A pair whose rendered prompt leaves no room for a response within ``align.max_len`` tokens would be
truncated to nothing by trl (it cuts from the end), so it is quarantined as ``prompt_too_long``
with its file and line instead of training on an empty answer.
"""

from __future__ import annotations

import re

from components.common.preferences import ASSISTANT, HUMAN, PreferencePair, QuarantinedPair

_TURN = re.compile(r"(\n\nHuman:|\n\nAssistant:)")
# A response needs at least a few tokens inside max_len: one content token and the end-of-turn marker.
MIN_RESPONSE_TOKENS = 2


def prompt_turns(prompt: str) -> list[dict[str, str]]:
    """The chat turns of a pair's prompt: HH-RLHF dialogue turns, or one user turn."""
    if not prompt.startswith(HUMAN):
        return [{"role": "user", "content": prompt.strip()}]
    parts = _TURN.split(prompt)
    turns = []
    for marker, text in zip(parts[1::2], parts[2::2], strict=True):
        role = "user" if marker == HUMAN else "assistant"
        if text.strip():
            turns.append({"role": role, "content": text.strip()})
    if turns and turns[-1]["role"] == "assistant" and prompt.endswith(ASSISTANT):
        turns.pop()  # never happens for split_dialogue output, kept for hand-written prompts
    return turns or [{"role": "user", "content": prompt.strip()}]


def to_record(pair: PreferencePair) -> dict:
    """One conversational preference example (trl's ``prompt``/``chosen``/``rejected`` format)."""
    return {
        "prompt": prompt_turns(pair.prompt),
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
    }


def to_dataset(pairs: list[PreferencePair]):
    from datasets import Dataset

    return Dataset.from_list([to_record(p) for p in pairs])


def prompt_ids(tokenizer, pair: PreferencePair) -> list[int]:
    """Token ids of the rendered prompt, ending with the assistant marker."""
    return tokenizer.apply_chat_template(prompt_turns(pair.prompt), add_generation_prompt=True)["input_ids"]


def refuse_long_prompts(
    pairs: list[PreferencePair], tokenizer, max_len: int
) -> tuple[list[PreferencePair], list[QuarantinedPair]]:
    """``(kept, quarantined)``: pairs whose prompt leaves fewer than :data:`MIN_RESPONSE_TOKENS` of
    ``max_len`` are quarantined as ``prompt_too_long`` with file and line."""
    kept, bad = [], []
    for pair in pairs:
        n = len(prompt_ids(tokenizer, pair))
        if n > max_len - MIN_RESPONSE_TOKENS:
            bad.append(
                QuarantinedPair(pair.file, pair.line, "prompt_too_long", f"{n} prompt tokens > align.max_len={max_len}")
            )
        else:
            kept.append(pair)
    return kept, bad
