"""Weight averaging instead of (or beside) a final LR decay: an EMA, or the mean of the last K snapshots.

Averaging the weights of a run at a constant LR recovers most of what the final decay buys
(Sanyal et al. 2023, "Early Weight Averaging meets High Learning Rates"; Kaddour 2022, "Stop Wasting
My Time!"; Hägele et al. 2024 on WSD vs averaging) without committing to an end: the stable run can
go on. :class:`WeightAveraging` keeps, on every worker, in host memory:

- ``ema``: an exponential moving average updated after every step,
  ``ema ← d·ema + (1−d)·w``, started from zero and divided by ``1 − dⁿ`` (Adam's bias correction),
  so it is a proper weighted mean of the ``n`` steps seen and the base weights do not leak in;
- ``uniform`` / ``weighted``: the weights after every ``every``-th step, the last ``last_k`` of them
  (the engine's own "checkpoints" for averaging, retained exactly as long as averaging needs them);
  at the end their mean, uniform or with linearly growing weights ``1, 2, …, K`` (newer count more).

After the last step the average is loaded into the model, so the final held-out probes measure it and
the published model (what later stages receive) *is* it. Every rank computes the same average (DDP
replicas hold identical weights), since every rank probes a share of the held-out windows.

The state (EMA tensor or the K snapshots) is saved with each persistent checkpoint
(:meth:`save_files`), so a run resumed from a checkpoint averages exactly as an uninterrupted one.
It is not part of the in-memory snapshots of ``components/resilience``: a run recovered from one
resumes the average from the last persistent checkpoint's state (the snapshots taken in between are
missing from it), which the summary records as ``resumed_from_step``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from components.common.config import AVERAGES
from components.training.callbacks import Callback, TrainState

STATE_FILE = "averaging.pt"

Weights = dict[str, torch.Tensor]


def ema_update(ema: Weights, weights: Weights, decay: float) -> None:
    """``ema ← decay·ema + (1−decay)·weights`` in place (both on the same device and dtype)."""
    for name, value in weights.items():
        ema[name].mul_(decay).add_(value, alpha=1.0 - decay)


def ema_weights(ema: Weights, decay: float, updates: int) -> Weights:
    """The bias-corrected EMA after ``updates`` updates from zero: a weighted mean of the weights seen."""
    scale = 1.0 / (1.0 - decay**updates)
    return {name: value * scale for name, value in ema.items()}


def mean_weights(snapshots: list[Weights], mode: str) -> Weights:
    """The mean of ``snapshots`` (oldest first): ``uniform``, or ``weighted`` with weights 1, 2, …, K."""
    coefficients = [1.0] * len(snapshots) if mode == "uniform" else [float(i + 1) for i in range(len(snapshots))]
    total = sum(coefficients)
    return {
        name: sum(c * snap[name] for c, snap in zip(coefficients, snapshots, strict=True)) / total
        for name in snapshots[0]
    }


class WeightAveraging(Callback):
    """Average the weights as the run goes; load the average into the model after the last step."""

    name = "averaging"

    def __init__(self, mode: str, *, total_steps: int, every: int, last_k: int, ema_decay: float) -> None:
        if mode not in AVERAGES[1:]:
            raise ValueError(f"unknown averaging {mode!r}; expected one of {', '.join(AVERAGES[1:])}")
        self.mode, self.total_steps, self.every, self.last_k, self.ema_decay = (
            mode,
            total_steps,
            every,
            last_k,
            ema_decay,
        )
        self.ema: Weights = {}
        self.updates = 0
        self.snapshots: list[tuple[int, Weights]] = []

    def post_step(self, state: TrainState) -> None:
        weights = _weights(state.module)
        if self.mode == "ema":
            if not self.ema:
                self.ema = {name: torch.zeros_like(value) for name, value in weights.items()}
            ema_update(self.ema, weights, self.ema_decay)
            self.updates += 1
        elif state.step % self.every == 0 or state.step == self.total_steps:
            # a resumed run takes these steps again: drop what the failed attempt kept past the resume point
            kept = [s for s in self.snapshots if s[0] < state.step] + [(state.step, weights)]
            self.snapshots = kept[-self.last_k :]
        if state.step == self.total_steps:
            live = state.module.state_dict()
            with torch.no_grad():
                for name, value in self.average().items():
                    live[name].copy_(value)

    def average(self) -> Weights:
        """The current average (what the model becomes after the last step)."""
        if self.mode == "ema":
            return ema_weights(self.ema, self.ema_decay, self.updates)
        return mean_weights([w for _, w in self.snapshots], self.mode)

    def state_dict(self) -> dict:
        # JSON for the summary; the tensors travel in save_files
        return {"mode": self.mode, "ema_updates": self.updates, "averaged_steps": [s for s, _ in self.snapshots]}

    def save_files(self, path: Path) -> None:
        torch.save({"ema": self.ema, "updates": self.updates, "snapshots": self.snapshots}, path / STATE_FILE)

    def load_files(self, path: Path) -> None:
        if (path / STATE_FILE).exists():
            saved = torch.load(path / STATE_FILE, weights_only=True)
            self.ema, self.updates = saved["ema"], saved["updates"]
            self.snapshots = [(int(step), weights) for step, weights in saved["snapshots"]]


def averaging_fields(section) -> dict:
    """The averaging of a ``pretrain`` or ``continual`` config section as :class:`TrainSpec` fields."""
    return {
        "average": section.average,
        "average_every": section.average_every,
        "average_last_k": section.average_last_k,
        "ema_decay": section.ema_decay or fitted_ema_decay(section.steps, section.decay_fraction),
    }


def fitted_ema_decay(steps: int, decay_fraction: float) -> float:
    """The EMA decay of ``ema_decay=0``: ``1 - 1/W``, ``W = max(2, decay_fraction x steps)``.

    Averaging stands in for the final decay, so it should span what the decay would: an EMA's mean
    weight age is ``1/(1-d)`` steps, set to the WSD tail (20% of the run by default). A fixed decay
    does not fit every run: 0.99 (a 100-step window) averages in the early, far-off weights of a 150-step
    continual run and is all warm-up in a 24-step one.
    """
    return 1.0 - 1.0 / max(2.0, decay_fraction * steps)


def _weights(module: torch.nn.Module) -> Weights:
    """Floating-point parameters and buffers by name, detached, on the CPU (host memory, not the GPU's)."""
    return {
        name: value.detach().to("cpu", copy=True)
        for name, value in module.state_dict().items()
        if value.is_floating_point()
    }
