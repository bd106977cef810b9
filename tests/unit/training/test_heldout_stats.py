"""Held-out loss with a standard error over documents: same number as heldout_loss, honest noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.common.shards import TokenWindows
from components.common.tokenizer import load_tokenizer
from components.training.heldout import heldout_loss, heldout_stats


@pytest.fixture(scope="module")
def model(tiny_model):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def stats(model, tiny_dataset):
    eos = load_tokenizer(tiny_dataset / "tokenizer").eos_token_id
    return heldout_stats(model, tiny_dataset, eos_token_id=eos, seq_len=64, max_tokens=3000, batch_size=4)


def test_loss_equals_heldout_loss_on_the_same_windows(stats, model, tiny_dataset):
    assert stats.loss == pytest.approx(heldout_loss(model, tiny_dataset, seq_len=64, max_tokens=3000, batch_size=4))


def test_counts_the_documents_the_windows_touch(stats, tiny_dataset):
    eos = load_tokenizer(tiny_dataset / "tokenizer").eos_token_id
    windows = TokenWindows(tiny_dataset, "heldout", 65)
    n = 3000 // 65
    tokens = np.concatenate([windows[i] for i in range(n)])
    # predicted tokens run from each window's 2nd token on; a document ends at each EOS
    assert stats.tokens == n * 64
    assert int(np.sum(tokens == eos)) - 1 <= stats.documents <= int(np.sum(tokens == eos)) + 1


def test_stderr_is_positive_and_carries_to_perplexity_by_the_delta_method(stats):
    assert 0 < stats.stderr < stats.loss
    assert stats.perplexity_stderr == pytest.approx(math.exp(stats.loss) * stats.stderr)
