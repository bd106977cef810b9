"""The chat template: reserved markers, generation prompt, prefix property, save/load round trip."""

from __future__ import annotations

import pytest

from components.align.chat import CHAT_TEMPLATE, answer_messages, install_chat_template, prompt_messages, stop_token_ids
from components.common.tokenizer import ASSISTANT, END, SYSTEM, USER, load_tokenizer


@pytest.fixture
def chat_tokenizer(tiny_dataset):
    tok = load_tokenizer(tiny_dataset / "tokenizer")
    install_chat_template(tok)
    return tok


def test_template_uses_the_reserved_markers():
    for marker in (SYSTEM, USER, ASSISTANT, END):
        assert marker in CHAT_TEMPLATE


def test_conversation_renders_turns_between_markers(chat_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, *prompt_messages("2+2?"), *answer_messages("4")]
    text = chat_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == f"{SYSTEM}Be brief.{END}{USER}2+2?{END}{ASSISTANT}4{END}"


def test_generation_prompt_ends_with_the_assistant_marker(chat_tokenizer):
    ids = chat_tokenizer.apply_chat_template(prompt_messages("How many?"), add_generation_prompt=True)["input_ids"]
    assert ids[-1] == chat_tokenizer.convert_tokens_to_ids(ASSISTANT)
    without = chat_tokenizer.apply_chat_template(prompt_messages("How many?"), add_generation_prompt=False)["input_ids"]
    assert without == ids[:-1]


def test_rendered_prompt_is_a_token_prefix_of_prompt_plus_answer(chat_tokenizer):
    prompt = prompt_messages("Natalia sold 48 clips. How many?")
    prompt_ids = chat_tokenizer.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
    full_ids = chat_tokenizer.apply_chat_template(prompt + answer_messages(" She sold 72.\n#### 72"))["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert full_ids[-1] == chat_tokenizer.convert_tokens_to_ids(END)


def test_chat_template_survives_save_and_load(chat_tokenizer, tmp_path):
    chat_tokenizer.save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.chat_template == CHAT_TEMPLATE
    ids = reloaded.apply_chat_template(prompt_messages("Hi"), add_generation_prompt=True)["input_ids"]
    assert reloaded.decode(ids) == f"{USER}Hi{END}{ASSISTANT}"


def test_unknown_role_is_rejected(chat_tokenizer):
    with pytest.raises(Exception, match="unknown chat role tool"):
        chat_tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_stop_tokens_are_end_of_turn_then_eos(chat_tokenizer):
    assert stop_token_ids(chat_tokenizer) == [chat_tokenizer.convert_tokens_to_ids(END), chat_tokenizer.eos_token_id]
