"""What one training run is: a description every Ray worker (and a RayJob on another cluster) can read.

A :class:`TrainSpec` is built by a training stage (``pretrain``, ``continual``) and travels to the Ray
workers inside ``train_loop_config``; with the RayJob launcher it first travels through the object
store as JSON (:meth:`TrainSpec.to_json`). So it holds plain values and store URIs only, never open
files, models or local paths: the step that builds it, the Ray driver and the workers may be on
three different hosts that share nothing but the object store.

Its :meth:`TrainSpec.resume_key` is stored in every checkpoint: the values that give "step S" its
meaning (schedule, batch, world size, seed, data mixture).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from components.common.config import LifecycleConfig, from_dict, to_dict, versioned_dict
from components.common.errors import ConfigError
from components.common.storage import join
from components.training.callbacks import Callback

SUMMARY_FILE = "training_summary.json"  # written by rank 0 next to the model, last


@dataclass(frozen=True)
class Probe:
    """A held-out loss measured on the workers while training (never on the driver, which holds no model).

    The curve gets a point at step 0 when ``at_start`` (before the first update of a fresh run), every
    ``every`` steps (0 = never in between), at each step of ``steps``, and always at the last step.
    """

    name: str  # key of the curve in the training summary ("heldout", "old_heldout", ...)
    dataset_uri: str  # curated dataset whose split is measured
    every: int = 0
    at_start: bool = False
    split: str = "heldout"
    max_tokens: int = 50_000  # the first max_tokens tokens of the split, as everywhere (training/heldout.py)
    batch_size: int = 8
    steps: tuple[int, ...] = ()  # explicit 1-based steps to measure after (e.g. denser while re-warming)


@dataclass(frozen=True)
class TrainSpec:
    """Everything a worker needs: plain values and store URIs."""

    cfg: LifecycleConfig  # the resolved run config (seed, model preset, seq_len, optimizer knobs, storage)
    stage: str  # "pretrain" or "continual": names the Ray Train run and its checkpoints
    dataset_uri: str  # curated dataset whose train split is trained on
    output_uri: str  # rank 0 writes model/ (HF model + tokenizer) and training_summary.json here
    checkpoint_uri: str  # Ray Train storage: <checkpoint_uri>/<stage>/checkpoint-<step>
    steps: int
    batch_size: int  # sequences per worker per step
    lr: float  # peak LR
    warmup_steps: int
    min_lr_ratio: float
    schedule: str = "cosine"  # components/training/schedule.py: cosine | wsd | constant | inverse_sqrt
    decay_steps: int = 0  # wsd: length of the final decay
    decay_shape: str = "sqrt"  # wsd: linear | sqrt | cosine
    average: str = "none"  # components/training/averaging.py: none | ema | uniform | weighted
    average_every: int = 1  # uniform/weighted: snapshot the weights every N steps
    average_last_k: int = 1  # uniform/weighted: average the last K snapshots
    ema_decay: float = 0.99  # ema: per-step decay
    branch_steps: tuple[int, ...] = ()  # wsd: leave a branch point (loop.branch_point_uri) after these steps
    eval_checkpoint_steps: tuple[int, ...] = ()  # keep the model after these steps (training/eval_checkpoints.py)
    branch_from_uri: str = ""  # a decay branch: start from this branch point of the stable run
    init_model_uri: str = ""  # HF model in the store to start from ('' = random init from cfg.model.preset)
    replay_uri: str = ""  # old corpus mixed into every batch (continual pretraining)
    replay_fraction: float = 0.0
    replays: tuple[tuple[str, float], ...] = ()  # (old corpus, fraction of each batch): every ancestor
    order: str = "random"  # components/training/data.py: random | quality (curriculum, best windows last)
    curriculum_steps: int = 0  # order=quality spans the windows of this many steps (0 = steps; a branch: its run's)
    probes: tuple[Probe, ...] = ()
    mlflow_run_id: str = ""  # rank 0 logs the loss and LR curves to this run ('' = none)
    plugins: tuple[str, ...] = ()  # "module:function" callback factories run on the Ray driver (driver.py)
    callbacks: tuple[Callback, ...] = ()  # extra callbacks for in-process launches (tests); not serialisable

    @property
    def tokenizer_uri(self) -> str:
        return join(self.dataset_uri, "tokenizer")

    @property
    def summary_uri(self) -> str:
        return join(self.output_uri, SUMMARY_FILE)

    def branch_point_uri(self, step: int) -> str:
        """Where this run leaves the branch point of ``step`` (``branch_steps``) for a decay branch."""
        return join(self.checkpoint_uri, self.stage, "branch-points", f"checkpoint-{step:08d}")

    def decay_branch(self, step: int) -> TrainSpec:
        """The WSD decay branch off this run's stable phase at ``step``: the same run continued from its
        branch point, with this run's decay over the ``decay_steps`` after ``step``; its own artifact
        (model and summary under ``<output_uri>/branches/step-<step>``), no averaging, no MLflow curves."""
        if self.schedule != "wsd" or not self.warmup_steps <= step < self.steps - self.decay_steps:
            raise ConfigError(
                f"{self.stage}: a decay branch needs schedule=wsd and a step in the stable phase "
                f"[{self.warmup_steps}, {self.steps - self.decay_steps}), got {self.schedule} and step {step}"
            )
        return replace(
            self,
            stage=f"{self.stage}-branch-{step:08d}",
            steps=step + self.decay_steps,
            output_uri=join(self.output_uri, "branches", f"step-{step:08d}"),
            branch_from_uri=self.branch_point_uri(step),
            curriculum_steps=self.curriculum_steps or self.steps,
            branch_steps=(),
            eval_checkpoint_steps=(),
            average="none",
            mlflow_run_id="",
        )

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
            "schedule": [self.schedule, self.decay_steps, self.decay_shape],
            "average": [self.average, self.average_every, self.average_last_k, self.ema_decay],
            "replay_fraction": self.replay_fraction,
            "replays": [list(r) for r in self.replays],
            "order": [self.order, self.curriculum_steps or self.steps],
            "weight_decay": p.weight_decay,
            "grad_clip": p.grad_clip,
        }

    def to_json(self) -> str:
        """The spec as JSON (for a RayJob's driver); in-process callbacks cannot travel this way."""
        if self.callbacks:
            names = ", ".join(type(cb).__name__ for cb in self.callbacks)
            raise ConfigError(
                f"training callbacks {names} are Python objects and cannot be sent to a RayJob; "
                "set pretrain.launcher=ray, or contribute them through TrainSpec.plugins"
            )
        data = asdict(replace(self, cfg=None, callbacks=()))
        data["cfg"] = to_dict(self.cfg)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainSpec:
        data = json.loads(text)
        data.pop("callbacks", None)
        data["cfg"] = from_dict(LifecycleConfig, data["cfg"])
        data["probes"] = tuple(Probe(**{**p, "steps": tuple(p.get("steps", ()))}) for p in data.get("probes", ()))
        data["plugins"] = tuple(data.get("plugins", ()))
        data["branch_steps"] = tuple(data.get("branch_steps", ()))
        data["eval_checkpoint_steps"] = tuple(data.get("eval_checkpoint_steps", ()))
        data["replays"] = tuple((uri, fraction) for uri, fraction in data.get("replays", ()))
        return cls(**data)


def probe_points(probe: Probe, step: int, total_steps: int) -> bool:
    """Whether ``probe`` measures after optimizer step ``step`` (1-based) of a ``total_steps`` run."""
    return step == total_steps or (probe.every > 0 and step % probe.every == 0) or step in probe.steps
