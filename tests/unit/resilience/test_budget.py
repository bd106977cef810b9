"""The keeper memory need, from the ranks' real shares: uneven split, framing, codec pieces, headroom."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from components.common.errors import ConfigError
from components.common.models import llama_config
from components.resilience.budget import (
    KeeperNeed,
    check_need,
    estimate_before_fit,
    framed_share_bytes,
    piece_bytes,
)
from components.resilience.codec import make_codec
from components.resilience.keeper import MIB
from components.resilience.layout import DEFAULT_META_CAPACITY, SnapshotLayout
from components.resilience.ownership import owned_names, parameter_sizes
from components.resilience.payload import frame
from tests.unit.resilience.tiny_training import SEQ_LEN, VOCAB, make_state, run_steps


def _meta_tiny(vocab_size: int = VOCAB) -> torch.nn.Module:
    with torch.device("meta"):
        config = llama_config(
            "tiny", vocab_size=vocab_size, seq_len=SEQ_LEN, bos_token_id=1, eos_token_id=2, pad_token_id=0
        )
        return LlamaForCausalLM(config)


def test_framed_shares_from_the_meta_model_match_the_payloads_real_ranks_frame():
    estimated = framed_share_bytes(_meta_tiny(), world_size=2)
    for rank in range(2):
        state = make_state(world_size=2, rank=rank)
        run_steps(state, 1)  # AdamW creates its state at the first step
        owned = owned_names(parameter_sizes(state.module), rank, 2)
        layout = SnapshotLayout.build(state.module, state.optimizer, owned, meta_capacity=DEFAULT_META_CAPACITY)
        real = len(frame(layout, bytes(layout.total_bytes)))
        # the estimate describes AdamW's step as on a GPU run: one byte more of JSON per parameter
        steps = sum(e.part == "step" for e in layout.entries)
        assert estimated[rank] - real == steps


def test_the_largest_share_sets_the_estimate_not_the_mean():
    params = sum(p.numel() * p.element_size() for p in _meta_tiny(4096).parameters())
    shares = framed_share_bytes(_meta_tiny(4096), world_size=2)  # the tiny profile's vocabulary
    assert max(shares) > 1.25 * (sum(shares) / 2), "the embedding makes the split uneven in the tiny model"
    need = estimate_before_fit(shares, nodes=4, codec=("xor", 2, 1))
    assert need.stored == 2 * piece_bytes("xor", 2, 1, max(shares))  # 2 groups x 3 pieces over 4 nodes
    even_split = 2 * (3 * params // (2 * 2))  # what an estimate from the mean share would say
    assert need.stored > 1.25 * even_split


@pytest.mark.parametrize(("scheme", "k", "m"), [("xor", 3, 1), ("rs", 2, 2)])
def test_piece_bytes_are_the_size_of_the_pieces_the_codec_makes(scheme, k, m):
    payload = bytes(range(256)) * 4099
    pieces = make_codec(scheme, k, m).encode(1, 0, payload)
    assert {len(p.data) for p in pieces} == {piece_bytes(scheme, k, m, len(payload))}


def test_a_need_above_the_budget_names_the_key_and_the_mib_to_set():
    need = KeeperNeed(stored=30 * MIB, transient=40 * MIB)  # 100 MiB, 112 with headroom
    with pytest.raises(ConfigError) as failure:
        check_need(100, need, "measured on node abc after snapshot version 4")
    message = str(failure.value)
    assert "resilience.keeper_memory_mb=100 is too small" in message
    assert "at least 112" in message and "node abc" in message
    check_need(112, need, "measured")
