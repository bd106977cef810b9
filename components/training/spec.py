"""What one training run is: the picklable description every Ray worker receives.

A :class:`TrainSpec` is built on the driver (by ``pretrain`` or ``continual``) and shipped to the
workers inside ``train_loop_config``, so it holds plain values and callback objects only, never
open files or models. Its :meth:`TrainSpec.resume_key` is stored in every checkpoint: the values
that give "step S" its meaning (schedule, batch, world size, seed, data mixture).
"""

from __future__ import annotations

from dataclasses import dataclass

from components.common.config import LifecycleConfig, versioned_dict
from components.training.callbacks import Callback


@dataclass(frozen=True)
class TrainSpec:
    """Everything a worker needs; it is pickled to every Ray worker, so it holds plain values."""

    cfg: LifecycleConfig  # the resolved run config (seed, model preset, seq_len, optimizer knobs)
    stage: str  # "pretrain" or "continual"
    dataset_dir: str  # curated dataset whose train split is trained on
    tokenizer_dir: str
    steps: int
    batch_size: int  # sequences per worker per step
    lr: float  # peak LR
    warmup_steps: int
    min_lr_ratio: float
    init_model_dir: str = ""  # HF model to start from ('' = random init from cfg.model.preset)
    replay_dir: str = ""  # old corpus mixed into every batch (continual pretraining)
    replay_fraction: float = 0.0
    callbacks: tuple[Callback, ...] = ()
    plugins: tuple[str, ...] = ()  # "module:function" callback factories run on the Ray driver (driver.py)

    def resume_key(self, world_size: int) -> dict:
        """The values that must match for a checkpoint of this run to be resumable."""
        p = self.cfg.pretrain
        return {
            "stage": self.stage,
            "model": versioned_dict(self.cfg.model),
            "seed": self.cfg.run.seed,
            "world_size": world_size,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "warmup_steps": self.warmup_steps,
            "min_lr_ratio": self.min_lr_ratio,
            "replay_fraction": self.replay_fraction,
            "weight_decay": p.weight_decay,
            "grad_clip": p.grad_clip,
        }
