"""Held-out losses measured by the workers while they train (:class:`HeldoutProbes`).

A training driver never holds the model (on a cluster it is a small pod, or a RayJob's head with no
GPU), so every held-out number a training stage reports is measured here, by the ranks that hold
the weights: at step 0 of a fresh run (``Probe.at_start``: "before" numbers), every ``Probe.every``
steps (the stability gap of continual pretraining shows only in between), and at the last step
("after" numbers). Each rank evaluates every ``world_size``-th window and one all-reduce sums the
losses, so a probe costs ``1 / world_size`` of a single-process evaluation and every rank ends with
the same value. Measurements never draw random numbers (eval mode, no dropout), so probing does not
change the training trajectory.

Curves live in the callback's ``state_dict`` (rank 0's is saved with every checkpoint) and reach the
driver in the training summary under ``callbacks["probes"]["curves"][<probe name>]``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from components.training.callbacks import Callback, TrainState
from components.training.heldout import batches_per_rank, heldout_windows, loss_sums, window_count
from components.training.parallel import is_sharded
from components.training.spec import Probe, probe_points


class HeldoutProbes(Callback):
    """Measure every :class:`Probe` of the spec on the workers; results in ``state_dict()["curves"]``."""

    name = "probes"

    def __init__(
        self, probes: tuple[Probe, ...], *, total_steps: int, seq_len: int, store_options: dict, cache_dir: str = ""
    ) -> None:
        self.probes, self.total_steps, self.seq_len = probes, total_steps, seq_len
        self.store_options, self.cache_dir = store_options, cache_dir
        self.curves: dict[str, list[list[float]]] = {p.name: [] for p in probes}
        self._windows: dict = {}

    def pre_train(self, state: TrainState) -> None:
        if state.step == 0:
            for probe in self.probes:
                if probe.at_start:
                    self._record(probe, state)

    def post_step(self, state: TrainState) -> None:
        for probe in self.probes:
            if probe_points(probe, state.step, self.total_steps):
                self._record(probe, state)

    def state_dict(self) -> dict:
        return {"curves": self.curves}

    def load_state_dict(self, state: dict) -> None:
        for name, curve in state.get("curves", {}).items():
            self.curves[name] = [list(point) for point in curve]

    def _record(self, probe: Probe, state: TrainState) -> None:
        loss = self.measure(probe, state)
        # A run resumed from an older state measures these steps again: the new point replaces the old.
        self.curves[probe.name] = [p for p in self.curves[probe.name] if p[0] < state.step] + [[state.step, loss]]

    def measure(self, probe: Probe, state: TrainState) -> float:
        """This probe's held-out loss for the current weights (a collective: every rank must call it)."""
        if probe.name not in self._windows:
            self._windows[probe.name] = heldout_windows(
                probe.dataset_uri,
                split=probe.split,
                seq_len=self.seq_len,
                store_options=self.store_options,
                cache_dir=self.cache_dir,
            )
        windows = self._windows[probe.name]
        mine = list(range(window_count(windows, probe.max_tokens)))[state.rank :: state.world_size]
        batches = 0
        if is_sharded(state.module):  # FSDP: every rank must run as many forwards (each is a collective)
            batches = batches_per_rank(window_count(windows, probe.max_tokens), state.world_size, probe.batch_size)
        total, count = loss_sums(state.module, windows, mine, probe.batch_size, batches=batches)
        device = next(state.module.parameters()).device  # NCCL reduces device tensors only
        sums = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
        if state.world_size > 1:
            dist.all_reduce(sums)
        return float(sums[0] / sums[1])
