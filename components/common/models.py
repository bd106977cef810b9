"""Model presets: Hugging Face ``LlamaForCausalLM`` architectures looked up by name in one place.

``tiny`` trains in minutes on two CPU cores, ``mini`` (~26M parameters) is the larger CPU preset of
the benchmarks, ``small`` is GPT-2-small sized (~125M parameters with a
32k vocabulary), ``1b`` is a Llama-style 1B model for a GPU cluster. The vocabulary size always comes
from the tokenizer, so a preset never disagrees with the tokenizer it is trained with.
"""

from __future__ import annotations

from typing import Any

from components.common.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4
    ),
    # ~26M parameters with a 512-token vocabulary: big enough for CPU benchmarks to see real state sizes
    "mini": dict(
        hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8
    ),
    "small": dict(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12
    ),
    "1b": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4
    ),
}


def llama_config(
    preset: str, *, vocab_size: int, seq_len: int, bos_token_id: int, eos_token_id: int, pad_token_id: int
):
    """The ``LlamaConfig`` of ``preset`` for a tokenizer with ``vocab_size`` tokens."""
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max(seq_len, 256),
        rms_norm_eps=1e-5,
        tie_word_embeddings=preset == "tiny",  # tying halves the parameters where embeddings dominate
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        **PRESETS[preset],
    )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
