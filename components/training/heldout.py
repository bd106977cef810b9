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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class HeldoutStats:
    """Held-out loss with its standard error, from per-document losses.

    ``loss`` is the same token-weighted mean :func:`heldout_loss` returns. Its standard error treats
    documents, not tokens, as the independent draws (tokens of one document are correlated, so a
    per-token error would be far too small): the ratio estimator sum(L_d) / sum(n_d) over documents
    d with summed loss L_d and n_d predicted tokens has variance D/(D-1) * sum((L_d - loss*n_d)^2) / N^2
    (the cluster-robust form). ``perplexity_stderr`` follows by the delta method: exp(loss) * stderr.
    """

    loss: float
    stderr: float
    documents: int
    tokens: int

    @property
    def perplexity(self) -> float:
        return perplexity(self.loss)

    @property
    def perplexity_stderr(self) -> float:
        return self.perplexity * self.stderr


@torch.no_grad()
def heldout_stats(
    model,
    dataset: str | Path,
    *,
    eos_token_id: int,
    split: str = "heldout",
    seq_len: int = 128,
    max_tokens: int = 50_000,
    batch_size: int = 8,
    store_options: dict | None = None,
) -> HeldoutStats:
    """:func:`heldout_loss` on the same windows, plus its standard error over documents.

    A document ends at ``eos_token_id`` (curation appends one to every record). A predicted token
    belongs to the document of the token before it, so predicting the EOS closes its document and
    the token after it opens the next; a document cut by a window boundary stays one document.
    """
    windows = heldout_windows(dataset, split=split, seq_len=seq_len, store_options=store_options)
    indices = range(window_count(windows, max_tokens))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    doc_loss: dict[int, float] = {}
    doc_tokens: dict[int, int] = {}
    offset = 0  # documents finished before the current window
    for start in range(0, len(indices), batch_size):
        rows = np.stack([windows[i] for i in indices[start : start + batch_size]])
        batch = torch.from_numpy(rows).to(device)
        logits = model(input_ids=batch[:, :-1]).logits.float()
        losses = (
            torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:].long(), reduction="none")
            .cpu()
            .numpy()
        )
        for row, token_losses in zip(rows, losses, strict=True):
            # document of predicted token j (row position j+1) = offset + EOS count in row[: j+1]
            docs = offset + np.cumsum(row[:-1] == eos_token_id)
            for d, loss_sum, n in _group_sums(docs, token_losses):
                doc_loss[d] = doc_loss.get(d, 0.0) + loss_sum
                doc_tokens[d] = doc_tokens.get(d, 0) + n
            offset += int(np.sum(row == eos_token_id))
    model.train(was_training)
    sums = np.array(list(doc_loss.values()))
    counts = np.array([doc_tokens[d] for d in doc_loss])
    total = float(counts.sum())
    loss = float(sums.sum() / total)
    d = len(sums)
    stderr = math.sqrt(d / (d - 1) * float(np.sum((sums - loss * counts) ** 2))) / total if d > 1 else float("nan")
    return HeldoutStats(loss=loss, stderr=stderr, documents=d, tokens=int(total))


def _group_sums(docs: np.ndarray, values: np.ndarray):
    """(document, summed value, count) for each run of equal ``docs`` (non-decreasing)."""
    bounds = np.flatnonzero(np.diff(docs)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(docs)], strict=True):
        yield int(docs[lo]), float(values[lo:hi].sum()), int(hi - lo)


def perplexity(loss: float) -> float:
    """exp(loss), capped so a diverged model reports a large finite number rather than inf."""
    return math.exp(min(loss, 50.0))
