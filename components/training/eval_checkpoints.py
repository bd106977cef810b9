"""Checkpoints kept for evaluation: K evenly spaced models of a run, as artifacts in its output.

BOSE's stability measure ranks the checkpoints of one pretraining run by each evaluation score and
asks whether the rankings agree (Kendall's tau, :mod:`components.evaluate.stability`). That needs K
models from along the run, and the resumption checkpoints cannot provide them: Ray Train keeps only
the newest ``pretrain.keep_checkpoints`` (they exist to resume, and each carries the optimizer state,
two to three times the model's size). So this callback writes the *model only* (HF format with its
tokenizer, loadable by the evaluate stage as is) at ``pretrain.eval_checkpoints`` evenly spaced steps
(:func:`eval_checkpoint_steps`, the last being the final step) into the run's own output:

    <output_uri>/eval_checkpoints/step-<S:08d>/model/      save_pretrained + tokenizer
    <output_uri>/eval_checkpoints/step-<S:08d>/_COMPLETE   {"step": S}, written last

They are URIs in the store like every output (cluster parity: the evaluate step reads them from
there, not from the trainer's disk). A run that fails after step S and resumes from an earlier
checkpoint passes step S again and rewrites the same weights (the step is a pure function of the
run's seed and data): an upload is idempotent. The weights are saved as trained at step S, before
weight averaging (``pretrain.average``) replaces them at the end.
"""

from __future__ import annotations

import json
import tempfile

from components.common.errors import ConfigError
from components.common.storage import join, open_store
from components.training.callbacks import Callback, TrainState

#: The folder under a run's output that holds its evaluation checkpoints.
FOLDER = "eval_checkpoints"
COMPLETE = "_COMPLETE"


def eval_checkpoint_steps(total_steps: int, k: int, key: str = "pretrain.eval_checkpoints") -> tuple[int, ...]:
    """``k`` evenly spaced steps of a ``total_steps`` run, the last one ``total_steps`` (0 → none).

    ``k`` larger than the steps a run makes cannot be honoured (two checkpoints would be one model):
    a ``ConfigError`` names ``key``.
    """
    if k == 0:
        return ()
    if k < 2 or k > total_steps:
        raise ConfigError(
            f"{key}={k}: must be 0 (off) or between 2 (a ranking needs two checkpoints) and the run's "
            f"{total_steps} steps (one checkpoint per step at most); lower {key} or raise the steps"
        )
    return tuple(round(i * total_steps / k) for i in range(1, k + 1))


def eval_checkpoint_uri(output_uri: str, step: int) -> str:
    return join(output_uri, FOLDER, f"step-{step:08d}")


def list_eval_checkpoints(store, output_uri: str) -> dict[int, str]:
    """Step → URI of each complete evaluation checkpoint under a run's output (``{}`` if it kept none)."""
    found = {}
    for uri in store.list(join(output_uri, FOLDER)):
        parent, _, leaf = uri.rstrip("/").rpartition("/")
        if leaf == COMPLETE:
            found[int(parent.rpartition("step-")[2])] = parent
    return dict(sorted(found.items()))


class EvalCheckpoints(Callback):
    """Rank 0 uploads the model at each of ``steps`` to ``<output_uri>/eval_checkpoints/step-<S>``."""

    def __init__(self, steps: tuple[int, ...], output_uri: str, store_options: dict) -> None:
        self.steps, self.output_uri, self.store_options = tuple(steps), output_uri, store_options
        self.saved: list[int] = []

    def post_step(self, state: TrainState) -> None:
        if state.step not in self.steps:
            return
        from components.training.parallel import full_model_state, is_sharded

        # FSDP: gathering the full weights is a collective, so every rank takes part
        weights = full_model_state(state.model) if is_sharded(state.module) else None
        if state.rank == 0:
            uri = eval_checkpoint_uri(self.output_uri, state.step)
            store = open_store(uri, **self.store_options)
            with tempfile.TemporaryDirectory(prefix="lmforge-evalckpt-") as tmp:
                state.module.save_pretrained(tmp, state_dict=weights)
                state.tokenizer.save_pretrained(tmp)
                store.upload_dir(tmp, join(uri, "model"))
            store.write_text(join(uri, COMPLETE), json.dumps({"step": state.step}))
            if state.step not in self.saved:
                self.saved.append(state.step)

    def state_dict(self) -> dict:
        return {"steps": list(self.steps), "saved": list(self.saved)}

    def load_state_dict(self, state: dict) -> None:
        self.saved = list(state.get("saved", []))
