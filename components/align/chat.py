"""The chat format of lmforge models: a Jinja template over the reserved turn markers.

A conversation renders as ``<|system|>…<|end|><|user|>…<|end|><|assistant|>…<|end|>``, using the
markers that :mod:`components.common.tokenizer` reserves from the first tokenizer on, so SFT never
adds a token with an untrained embedding. There are no newlines around the markers: the markers are
special tokens, so the text next to them always starts a fresh pre-token, and the rendered prompt
(``add_generation_prompt=True`` ends it with ``<|assistant|>``) is an exact token prefix of the
rendered prompt + answer. That prefix property is what lets trl's completion-only loss find where
the answer starts. The assistant turn sits inside ``{% generation %}`` so
``return_assistant_tokens_mask=True`` also works (assistant-only loss on multi-turn data).

The template is stored on the tokenizer (``tokenizer.chat_template``) and saved with it, so
``tokenizer.apply_chat_template(messages, add_generation_prompt=True)`` works on every model the
align stage writes; ``<|end|>`` is added to the model's generation stop tokens for the same reason.
"""

from __future__ import annotations

from components.common.errors import DataError
from components.common.tokenizer import ASSISTANT, END, SYSTEM, USER

# Spelled out rather than built from the constants so the template reads as what it renders;
# test_chat.py checks that these markers are the reserved ones.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}<|system|>{{ message['content'] }}<|end|>"
    "{%- elif message['role'] == 'user' -%}<|user|>{{ message['content'] }}<|end|>"
    "{%- elif message['role'] == 'assistant' -%}<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{%- else -%}{{ raise_exception('unknown chat role ' ~ message['role'] ~ '; use system, user or assistant') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def install_chat_template(tokenizer) -> None:
    """Set :data:`CHAT_TEMPLATE` on ``tokenizer``; fails if its vocabulary lacks a turn marker."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (SYSTEM, USER, ASSISTANT, END) if t not in vocab]
    if missing:
        raise DataError(
            f"tokenizer lacks the chat markers {missing}; train it with components.common.tokenizer.train_tokenizer, "
            "which reserves them"
        )
    tokenizer.chat_template = CHAT_TEMPLATE


def prompt_messages(prompt: str, system: str = "") -> list[dict[str, str]]:
    """The conversation that asks ``prompt`` (optionally under a system turn)."""
    turns = [{"role": "system", "content": system}] if system else []
    return [*turns, {"role": "user", "content": prompt}]


def as_turns(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
    """A prompt as chat turns: a plain question becomes one user turn, turns pass through."""
    return prompt_messages(prompt) if isinstance(prompt, str) else list(prompt)


def answer_messages(response: str) -> list[dict[str, str]]:
    """The assistant turn that answers it."""
    return [{"role": "assistant", "content": response}]


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a generated turn: the end-of-turn marker first, then the tokenizer's EOS."""
    ids = [tokenizer.convert_tokens_to_ids(END)]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
