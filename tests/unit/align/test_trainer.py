"""The SFT trainer's data: loss only on answer tokens, truncation to align.max_len."""

from __future__ import annotations

import pytest

from components.align.chat import install_chat_template, prompt_messages
from components.align.data import read_pairs
from components.align.trainer import build_trainer
from components.common.tokenizer import load_tokenizer


@pytest.fixture
def prepared(make_config, tiny_model, tmp_path):
    """(trainer, tokenizer, pairs) over 8 GSM8K pairs, trl's tokenization done."""
    from transformers import AutoModelForCausalLM

    cfg = make_config("align.max_len=512")
    pairs, _ = read_pairs(cfg.align.source, "question", "answer", max_pairs=8)
    tok = load_tokenizer(tiny_model)
    install_chat_template(tok)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    trainer, _ = build_trainer(cfg, model, tok, pairs[:6], pairs[6:], tmp_path / "work")
    return trainer, tok, pairs[:6]


def test_loss_is_masked_exactly_on_prompt_tokens(prepared):
    trainer, tok, pairs = prepared
    assert len(trainer.train_dataset) == len(pairs)
    for row, pair in zip(trainer.train_dataset, pairs, strict=True):
        prompt_ids = tok.apply_chat_template(prompt_messages(pair.prompt), add_generation_prompt=True)["input_ids"]
        n = len(prompt_ids)
        assert row["input_ids"][:n] == prompt_ids
        assert row["labels"][:n] == [-100] * n
        assert row["labels"][n:] == row["input_ids"][n:]
        assert len(row["input_ids"]) > n  # the answer is there and carries the loss


def test_answer_labels_end_with_the_end_of_turn_marker(prepared):
    trainer, tok, _ = prepared
    end_id = tok.convert_tokens_to_ids("<|end|>")
    assert all(row["labels"][-1] == end_id for row in trainer.train_dataset)


def test_examples_are_truncated_to_max_len(make_config, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = make_config("align.max_len=96")
    pairs, _ = read_pairs(cfg.align.source, "question", "answer", max_pairs=8)
    tok = load_tokenizer(tiny_model)
    install_chat_template(tok)
    trainer, _ = build_trainer(cfg, AutoModelForCausalLM.from_pretrained(tiny_model), tok, pairs, pairs[:1], tmp_path)
    lengths = [len(row["input_ids"]) for row in trainer.train_dataset]
    assert max(lengths) == 96
    assert all(any(label != -100 for label in row["labels"]) for row in trainer.train_dataset)


def test_chat_records_put_the_loss_on_assistant_turns_only(make_config, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from components.align.data import SftPair

    turns = (("user", "Hi"), ("assistant", "Hello there."), ("user", "Name?"), ("assistant", "Tiny."))
    chat = SftPair("", "Tiny.", "chat.jsonl", 1, turns)
    plain = SftPair("What is 1 + 1?", "2", "plain.jsonl", 1)
    tok = load_tokenizer(tiny_model)
    install_chat_template(tok)
    trainer, _ = build_trainer(
        make_config(), AutoModelForCausalLM.from_pretrained(tiny_model), tok, [chat, plain], [plain], tmp_path / "w"
    )
    row = trainer.train_dataset[0]
    trained = tok.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100])
    assert trained == "Hello there.<|end|>Tiny.<|end|>"


def test_packing_puts_several_pairs_in_one_row_without_padding(make_config, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = make_config("align.packing=true", "align.max_len=1024")
    pairs, _ = read_pairs(cfg.align.source, "question", "answer", max_pairs=12)
    tok = load_tokenizer(tiny_model)
    install_chat_template(tok)
    trainer, _ = build_trainer(cfg, AutoModelForCausalLM.from_pretrained(tiny_model), tok, pairs, pairs[:2], tmp_path)
    rows = trainer.train_dataset
    assert len(rows) < len(pairs)
    assert sum(len(r["seq_lengths"]) for r in rows) == len(pairs)  # each pair keeps its own attention span
    assert all(tok.pad_token_id not in r["input_ids"] for r in rows)


def test_lora_sft_saves_a_plain_model_with_the_adapters_merged(make_config, tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from components.align.trainer import trained_model

    cfg = make_config(
        "align.lora_r=4", "align.arithmetic_steps=0", "align.steps=3", "align.warmup_steps=0", "align.lr=1e-2"
    )
    pairs, _ = read_pairs(cfg.align.source, "question", "answer", max_pairs=8)
    tok = load_tokenizer(tiny_model)
    install_chat_template(tok)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    trainer, _ = build_trainer(cfg, AutoModelForCausalLM.from_pretrained(tiny_model), tok, pairs, pairs[:2], tmp_path)
    trainer.train()
    merged = trained_model(trainer)
    assert not any("lora" in name for name in merged.state_dict())
    assert set(merged.state_dict()) == set(base.state_dict())
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, base.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # only the adapted linear layers moved
