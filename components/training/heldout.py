"""Held-out loss and perplexity of a causal LM on a curated dataset's token shards.

Every stage that reports "loss on held-out data" (continual's forgetting, quantization's delta,
evaluation's headline number) calls :func:`heldout_loss`, so the numbers are comparable across
stages: same windows (the first ``max_tokens`` tokens of the split, cut into ``seq_len`` windows),
same token-weighted mean of next-token cross-entropy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from components.common.shards import TokenWindows


@torch.no_grad()
def heldout_loss(
    model,
    dataset_dir: str | Path,
    *,
    split: str = "heldout",
    seq_len: int = 128,
    max_tokens: int = 50_000,
    batch_size: int = 8,
) -> float:
    """Mean next-token cross-entropy (nats per token) of ``model`` on ``split`` of ``dataset_dir``."""
    windows = TokenWindows(dataset_dir, split, seq_len + 1)
    n = max(1, min(len(windows), max_tokens // (seq_len + 1)))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, n, batch_size):
        batch = torch.from_numpy(np.stack([windows[i] for i in range(start, min(n, start + batch_size))])).to(device)
        logits = model(input_ids=batch[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += batch[:, 1:].numel()
    model.train(was_training)
    return total / count


def perplexity(loss: float) -> float:
    """exp(loss), capped so a diverged model reports a large finite number rather than inf."""
    return math.exp(min(loss, 50.0))
