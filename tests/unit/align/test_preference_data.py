"""Preference pairs as chat turns; prompts too long for align.max_len are refused with file and line."""

from __future__ import annotations

from components.align.chat import install_chat_template
from components.align.preference_data import prompt_turns, refuse_long_prompts
from components.common.preferences import PreferencePair
from components.common.tokenizer import load_tokenizer


def test_hh_rlhf_prompt_becomes_alternating_chat_turns():
    prompt = "\n\nHuman: Hi there\n\nAssistant: Hello.\n\nHuman: How are you?\n\nAssistant:"
    assert prompt_turns(prompt) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "How are you?"},
    ]


def test_plain_prompt_becomes_one_user_turn():
    assert prompt_turns("Sort: cat dog") == [{"role": "user", "content": "Sort: cat dog"}]


def test_prompt_longer_than_max_len_is_quarantined_with_file_and_line(tiny_model):
    tok = load_tokenizer(tiny_model)
    install_chat_template(tok)
    short = PreferencePair("Sort: cat dog", "cat dog", "dog cat", "pairs.jsonl", 1)
    long = PreferencePair("word " * 200, "yes", "no", "pairs.jsonl", 2)
    kept, bad = refuse_long_prompts([short, long], tok, max_len=32)
    assert kept == [short]
    assert [(q.file, q.line, q.reason) for q in bad] == [("pairs.jsonl", 2, "prompt_too_long")]
    assert "align.max_len=32" in bad[0].excerpt
