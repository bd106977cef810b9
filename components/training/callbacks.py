"""Hooks around the training loop, OLMo-core style: the loop stays short, everything else plugs in.

A :class:`Callback` sees the live :class:`TrainState` of its worker after every optimizer step
(``post_step``), hears about a failure (``on_error``, then the exception propagates) and is closed
whatever happens (``close``). Callbacks travel to the Ray workers by pickling, so they take plain
values in ``__init__`` and open files, clients or buffers in ``pre_train``. Every rank runs every
callback; a callback that should act once per run checks ``state.rank == 0``.

A callback that keeps results (a curve, a counter) returns them from ``state_dict``: rank 0's dict is
saved in every checkpoint (so a resumed run continues it) and handed back to the driver in the
training summary under ``callbacks[<name>]``. State that is not JSON (averaged weights) goes into the
checkpoint directory through ``save_files`` and comes back through ``load_files``.

In-memory snapshotting (``components/resilience``) is such a callback: ``post_step`` copies the
state named here (module, optimizer, scheduler, step; the data position *is* the step) in the
background, and ``pre_optimizer_step`` waits for that copy so the optimizer never writes what it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainState:
    """What one worker's loop holds; callbacks read it, only the loop mutates it."""

    spec: Any  # the run's TrainSpec (components.training.spec)
    rank: int
    world_size: int
    model: Any  # as trained: DDP-wrapped when world_size > 1
    module: Any  # the bare LlamaForCausalLM inside it (for eval, saving, snapshotting)
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    batches: Any  # ResumableBatches: the batch of a step is a pure function of (seed, step, rank)
    step: int = 0  # optimizer steps completed; the next batch is batches.batch(step, ...)
    start_step: int = 0  # the step this worker group resumed from (0 on a fresh run)
    tokens_per_step: int = 0  # input tokens per optimizer step, all ranks together
    lr: float = 0.0  # the LR the last step was taken with
    loss_curve: list[list[float]] = field(default_factory=list)  # [[step, mean loss over ranks], ...]
    lr_curve: list[list[float]] = field(default_factory=list)  # [[step, LR of that step], ...]
    timed_steps: int = 0
    timed_seconds: float = 0.0
    startup: dict[str, float] = field(default_factory=dict)  # this worker's start-up phases, s (loop.startup_phases)
    #: every rank's process marks (loop.PROCESS_MARKS), gathered after this group's first step
    startup_ranks: list[dict[str, float]] = field(default_factory=list)
    stepped_at: float = 0.0  # time.time() when the last step's update was done, before the post_step callbacks

    @property
    def last_loss(self) -> float:
        return self.loss_curve[-1][1]

    @property
    def tokens_per_second(self) -> float:
        return self.timed_steps * self.tokens_per_step / self.timed_seconds if self.timed_seconds else 0.0


class Callback:
    """Override the events you need; the defaults do nothing."""

    @property
    def name(self) -> str:
        return type(self).__name__

    def pre_train(self, state: TrainState) -> None:
        """Once per worker, after model, optimizer and any resumed state are in place."""

    def pre_optimizer_step(self, state: TrainState) -> None:
        """Right before ``optimizer.step()`` (gradients ready, parameters still those of ``state.step``)."""

    def post_step(self, state: TrainState) -> None:
        """After every optimizer step (``state.step`` already counts it), before checkpointing."""

    def on_error(self, exc: BaseException) -> None:
        """The loop is failing with ``exc``; it is re-raised after every callback has seen it."""

    def close(self) -> None:
        """Always called last, after success or failure: flush and release resources."""

    def state_dict(self) -> dict:
        """JSON-serialisable results and state, saved with rank 0's checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned, when resuming from a checkpoint."""

    def save_files(self, path: Path) -> None:
        """Write state that is not JSON (tensors) into the checkpoint directory ``path`` (rank 0 only)."""

    def load_files(self, path: Path) -> None:
        """Read back what :meth:`save_files` wrote, from a resumed checkpoint's local copy (every rank)."""


class MlflowCurveLogger(Callback):
    """Rank 0 logs ``train_loss`` and ``lr`` for every step to an MLflow run, in batches.

    Batching (``every`` steps, and whatever is left on close) keeps the tracking server out of the
    step time: one request per batch instead of one per step.
    """

    def __init__(self, tracking_uri: str, run_id: str, every: int) -> None:
        self.tracking_uri, self.run_id, self.every = tracking_uri, run_id, max(1, every)
        self._pending: list[tuple[int, float, float]] = []
        self._active = False

    def pre_train(self, state: TrainState) -> None:
        import mlflow

        self._active = state.rank == 0
        if self._active:
            mlflow.set_tracking_uri(self.tracking_uri)

    def post_step(self, state: TrainState) -> None:
        if not self._active:
            return
        self._pending.append((state.step, state.last_loss, state.lr))
        if len(self._pending) >= self.every:
            self._flush()

    def close(self) -> None:
        if self._active:
            self._flush()

    def _flush(self) -> None:
        from components.common.lineage import log_curve

        if self._pending:
            log_curve(self.run_id, "train_loss", [(s, loss) for s, loss, _ in self._pending])
            log_curve(self.run_id, "lr", [(s, lr) for s, _, lr in self._pending])
            self._pending = []


class ProgressReporter(Callback):
    """Rank 0 prints a progress line (step/total, loss, tokens/s) about every 5 % of the run and at its end.

    These are what ``lmforge run`` shows live for a training step (components/common/log.py,
    ``report_progress``); twenty lines a run keep a pod's log readable too.
    """

    def __init__(self, stage: str, total_steps: int) -> None:
        self.stage, self.total = stage, total_steps
        self.every = max(1, total_steps // 20)
        self._active = False

    def pre_train(self, state: TrainState) -> None:
        self._active = state.rank == 0

    def post_step(self, state: TrainState) -> None:
        if self._active and (state.step % self.every == 0 or state.step == self.total):
            from components.common.log import report_progress

            report_progress(
                stage=self.stage,
                step=f"{state.step}/{self.total}",
                loss=state.last_loss,
                tok_s=round(state.tokens_per_second),
            )
