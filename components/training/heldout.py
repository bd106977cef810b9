"""Held-out loss and perplexity of a causal LM on a curated dataset's token shards.

Every number called "loss on held-out data" (pretraining's result, continual's forgetting,
quantization's delta, evaluation's headline) comes from here, so they are comparable across stages:
same windows (the first ``max_tokens`` tokens of the split, cut into ``seq_len + 1``-token windows),
same token-weighted mean of next-token cross-entropy. Training measures it on its workers, each rank
a share of the windows (:func:`loss_sums` + an all-reduce, ``probes.py``); single-process stages call
:func:`heldout_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from components.common.shards import TokenWindows


def heldout_windows(
    dataset: str | Path, *, split: str, seq_len: int, store_options: dict | None = None, cache_dir=""
) -> TokenWindows:
    """The windows of ``split`` of a dataset (a local directory or a store URI)."""
    return TokenWindows(dataset, split, seq_len + 1, store_options=store_options, cache_dir=cache_dir)


def window_count(windows: TokenWindows, max_tokens: int) -> int:
    """How many leading windows make up "the first ``max_tokens`` tokens" (at least one)."""
    return max(1, min(len(windows), max_tokens // windows.length))


def batches_per_rank(windows: int, world_size: int, batch_size: int) -> int:
    """Forward passes of the rank with the most of ``windows`` split round-robin over ``world_size`` ranks."""
    most = math.ceil(windows / world_size)
    return math.ceil(most / batch_size)


@torch.no_grad()
def loss_sums(
    model, windows: TokenWindows, indices: Sequence[int], batch_size: int, *, batches: int = 0
) -> tuple[float, int]:
    """(summed next-token cross-entropy in nats, number of predicted tokens) over the given windows.

    ``batches``: run at least this many forward passes, the ones past ``indices`` on window 0 and
    left out of the sums. FSDP needs it: every forward all-gathers the weights from all ranks, so
    every rank must run as many, even one whose share of the windows is smaller.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, max(len(indices), batches * batch_size), batch_size):
        if start >= len(indices):  # a filler pass: only takes part in the collectives
            model(input_ids=torch.from_numpy(np.stack([windows[0]])).to(device)[:, :-1])
            continue
        rows = [windows[i] for i in indices[start : start + batch_size]]
        batch = torch.from_numpy(np.stack(rows)).to(device)
        logits = model(input_ids=batch[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += batch[:, 1:].numel()
    model.train(was_training)
    return total, count


def heldout_loss(
    model,
    dataset: str | Path,
    *,
    split: str = "heldout",
    seq_len: int = 128,
    max_tokens: int = 50_000,
    batch_size: int = 8,
    store_options: dict | None = None,
) -> float:
    """Mean next-token cross-entropy (nats per token) of ``model`` on ``split`` of ``dataset``."""
    windows = heldout_windows(dataset, split=split, seq_len=seq_len, store_options=store_options)
    total, count = loss_sums(model, windows, range(window_count(windows, max_tokens)), batch_size)
    return total / count


def perplexity(loss: float) -> float:
    """exp(loss), capped so a diverged model reports a large finite number rather than inf."""
    return math.exp(min(loss, 50.0))
