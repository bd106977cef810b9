"""Deterministic, resumable batches of token windows, with an optional replay mixture.

The batch of ``(step, rank, world_size)`` is a pure function of the seed and those three numbers:
there is no iterator state to save, so resuming at step S replays exactly the data an
uninterrupted run would have seen (the "data-loader position" of a checkpoint is just the step).

Design: every source (0 = the training corpus, 1 = the replay corpus) is an endless stream of
window indices, epoch after epoch, each epoch a fresh permutation drawn from ``(seed, source,
epoch)``. Step ``s`` takes, for each rank, a contiguous slice of that stream: ranks read disjoint
slices, so within an epoch no window is seen twice. Hand-written rather than a
``DistributedSampler`` because that one is positional (epoch + iterator offset) and would need its
state saved and fast-forwarded on resume.

Replay: of each rank's ``batch_size`` rows, ``floor((s+1)·B·f) - floor(s·B·f)`` come from the old
corpus at step ``s``. The count varies by at most one between steps, and over any run the replayed
share is exactly ``f`` (a fixed ``round(B·f)`` would give 1/8 instead of 0.1 at B = 8). With several
old corpora (every ancestor of a retrained model), corpus ``i`` with fraction ``f_i`` gets the rows
between the cumulative counts ``floor(s·B·F_{i-1})`` and ``floor(s·B·F_i)``, ``F_i = f_1 + … + f_i``:
each corpus' share is exact over a run, the mixture of one step still a pure function of the step
(so resuming mid-mixture reproduces it bitwise), and one corpus reduces to the rule above.

Curriculum (``order="quality"``): the training corpus' stream is sorted by quality instead of
shuffled. Curation records each train document's quality score (:mod:`components.curate.score`,
``<dataset>/train/quality.npz``); a window's score is the token-weighted mean of the scores of the
documents it overlaps. Every epoch runs from the lowest-scoring window to the highest, so the best
data comes last, ties broken by the epoch's seeded permutation. Given the run's ``steps`` (and world
size), the epoch the run ends inside sorts only the windows the run reads from it, the same ones the
random order would read: a run shorter than an epoch (the usual continual step) sees the same data in
either order, best last, rather than only the corpus' worst windows. Ascending because the point of the
curriculum is to *see* the best data at the end of the run, where its effect on the final model is
largest; "How learning-rate decay wastes your best data in curriculum-based pretraining" shows that a
decaying LR spends those last steps at a tiny step size, so the ordering should be paired with a
constant LR and weight averaging (``average=ema``) rather than a final decay. The order is a pure
function of the seed and the epoch, like the random one, so resuming mid-mixture stays bitwise exact.
Replayed corpora keep their random order.

Where the data lives: the corpora are store URIs (``file://`` or ``s3://``), read by
:class:`~components.common.shards.TokenWindows` on whichever host the worker runs. When windows come
over the network, the rows of a batch are fetched concurrently and the next step's batch is fetched
while this step trains (:meth:`ResumableBatches.prefetch`): a batch is a pure function of the step,
so the next one is known in advance and prefetching cannot change what is trained on.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from components.common.errors import ConfigError, DataError
from components.common.shards import TokenWindows, read_manifest, read_quality

NEW, REPLAY = 0, 1
ORDERS = ("random", "quality")


def window_scores(doc_tokens: np.ndarray, scores: np.ndarray, length: int, windows: int) -> np.ndarray:
    """The token-weighted mean document score of each window ``[i*length, (i+1)*length)`` of the stream."""
    doc_tokens = np.asarray(doc_tokens, np.int64)
    scores = np.asarray(scores, np.float64)
    ends = np.cumsum(doc_tokens)
    starts = ends - doc_tokens
    mass = np.concatenate([[0.0], np.cumsum(doc_tokens * scores)])  # score summed over the tokens before doc i

    def prefix(t: np.ndarray) -> np.ndarray:  # score summed over tokens [0, t)
        i = np.minimum(np.searchsorted(ends, t, side="right"), len(ends) - 1)
        return mass[i] + (t - starts[i]) * scores[i]

    edges = np.arange(windows + 1, dtype=np.int64) * length
    return np.diff(prefix(edges)) / length


def check_order(dataset: str | Path, order: str, key: str, *, store_options: dict | None = None) -> None:
    """Refuse ``order=quality`` on a dataset curated without quality scores, before anything trains."""
    if order == "quality" and not read_manifest(dataset, store_options=store_options)["splits"]["train"].get("quality"):
        raise DataError(
            f"{key}=quality: {dataset} has no per-document quality scores (train/quality.npz): it was curated "
            f"before curation recorded them or with curate.quality_scores=false; re-curate it with "
            f"curate.quality_scores=true, or set {key}=random"
        )


class ResumableBatches:
    """Batches of ``seq_len + 1`` token windows (inputs and shifted targets) from curated shards."""

    def __init__(
        self,
        dataset: str | Path,
        *,
        seq_len: int,
        batch_size: int,
        seed: int,
        replay: str | Path | None = None,
        replay_fraction: float = 0.0,
        replays: Sequence[tuple[str | Path, float]] = (),
        store_options: dict | None = None,
        cache_dir: str | Path = "",
        order: str = "random",
        order_key: str = "order",
        steps: int = 0,
        world_size: int = 1,
    ) -> None:
        """``replays``: ``(dataset, fraction)`` of every old corpus; ``replay``/``replay_fraction``: one.
        ``order``: ``random`` or ``quality`` (the training corpus, best windows last); ``order_key`` is the
        config key named in errors (``continual.order``). ``steps``/``world_size``: the whole run's, so the
        quality order spans the windows the run reads (0 = sort whole epochs)."""
        if order not in ORDERS:
            raise ConfigError(f"{order_key}={order!r}: expected one of {', '.join(ORDERS)}")
        if replay_fraction > 0 and not replay:
            raise ConfigError(f"replay_fraction={replay_fraction} needs a replay dataset; none was given")
        replays = [(d, f) for d, f in ([(replay, replay_fraction)] if replay_fraction > 0 else []) + list(replays)]
        fractions = [f for _, f in replays]
        if any(f < 0 for f in fractions) or not 0.0 <= sum(fractions) < 1.0:
            raise ConfigError(f"replay fractions must be >= 0 and sum to [0, 1), got {fractions}")
        self.batch_size, self.seed = batch_size, seed
        self.replay_fraction = sum(fractions)
        self.cumulative = [0.0, *np.cumsum(fractions).tolist()]  # F_0 = 0, F_i = f_1 + ... + f_i
        opened = {"store_options": store_options, "cache_dir": cache_dir}
        self.sources = [TokenWindows(dataset, "train", seq_len + 1, **opened)]
        self.sources += [TokenWindows(d, "train", seq_len + 1, **opened) for d, f in replays]
        self.order = order
        self._scores = None
        if order == "quality":
            check_order(dataset, order, order_key, store_options=store_options)
            doc_tokens, scores = read_quality(dataset, "train", store_options=store_options)
            if int(np.sum(doc_tokens)) != self.sources[NEW].tokens:
                raise DataError(
                    f"{dataset}/train/quality.npz covers {int(np.sum(doc_tokens))} tokens but the train split has "
                    f"{self.sources[NEW].tokens}: the file does not belong to these shards; re-curate the dataset"
                )
            self._scores = window_scores(doc_tokens, scores, seq_len + 1, len(self.sources[NEW]))
        # windows of the training corpus the whole run reads, over all ranks (0 = unknown: whole epochs)
        self.span = world_size * self._consumed(steps, NEW) if steps else 0
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self._perms_lock = threading.Lock()  # the prefetch thread plans too
        # Remote windows: one ranged GET per row, so a batch's rows are fetched concurrently.
        remote = any(s.remote for s in self.sources)
        self._pool = ThreadPoolExecutor(max_workers=min(16, batch_size + 1)) if remote else None
        self._ahead: tuple[tuple[int, int, int], Future] | None = None

    def _replayed_before(self, step: int, source: int | None = None) -> int:
        """Rows replayed (from every old corpus, or from old corpora 1..``source``) per rank before ``step``."""
        share = self.cumulative[-1 if source is None else source]
        # 1e-9 absorbs float error such as 5 * 8 * 0.1 = 4.000000000000001 vs 3.9999...
        return math.floor(step * self.batch_size * share + 1e-9)

    def _consumed(self, step: int, source: int) -> int:
        """Rows each rank took from ``source`` before ``step``."""
        if source == NEW:
            return step * self.batch_size - self._replayed_before(step)
        return self._replayed_before(step, source) - self._replayed_before(step, source - 1)

    def counts(self, step: int) -> tuple[int, ...]:
        """Rows per rank at ``step`` from each source: the training corpus, then every old corpus."""
        return tuple(self._consumed(step + 1, s) - self._consumed(step, s) for s in range(len(self.sources)))

    def plan(self, step: int, rank: int, world_size: int) -> list[tuple[int, int]]:
        """The ``(source, window index)`` of every row of this rank's batch: new rows first, then replay."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        rows = []
        for source, n in enumerate(self.counts(step)):
            start = world_size * self._consumed(step, source) + rank * n
            rows += [(source, self._window(source, start + j)) for j in range(n)]
        return rows

    def batch(self, step: int, rank: int, world_size: int) -> torch.Tensor:
        """``[batch_size, seq_len + 1]`` int64 token ids for this rank at ``step``."""
        key = (step, rank, world_size)
        if self._ahead is not None and self._ahead[0] == key:
            ahead, self._ahead = self._ahead[1], None
            return ahead.result()
        return self._read(key)

    def prefetch(self, step: int, rank: int, world_size: int) -> None:
        """Start reading the batch of ``step`` in the background (only worth it for remote windows)."""
        if self._pool is not None and (self._ahead is None or self._ahead[0] != (step, rank, world_size)):
            key = (step, rank, world_size)
            self._ahead = (key, self._pool.submit(self._read, key))

    def _read(self, key: tuple[int, int, int]) -> torch.Tensor:
        plan = self.plan(*key)
        if self._pool is None:
            rows = [self.sources[source][index] for source, index in plan]
        else:
            rows = list(self._pool.map(lambda row: self.sources[row[0]][row[1]], plan))
        return torch.from_numpy(np.stack(rows))

    def _window(self, source: int, position: int) -> int:
        size = len(self.sources[source])
        epoch, offset = divmod(position, size)
        return int(self._permutation(source, epoch)[offset])

    def _permutation(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        with self._perms_lock:
            if key not in self._perms:
                # A step spans at most two epochs of a source, so older ones can go.
                self._perms = {k: v for k, v in self._perms.items() if k[0] != source or k[1] >= epoch - 1}
                rng = np.random.default_rng([self.seed, source, epoch])
                perm = rng.permutation(len(self.sources[source]))
                if source == NEW and self._scores is not None:  # curriculum: ascending score, ties in perm order
                    n = len(perm)  # sort the windows of this epoch the run reads (all of them but in its last)
                    read = min(n, max(0, self.span - epoch * n)) if self.span else n
                    head = perm[:read]
                    perm = np.concatenate([head[np.argsort(self._scores[head], kind="stable")], perm[read:]])
                self._perms[key] = perm
            return self._perms[key]
