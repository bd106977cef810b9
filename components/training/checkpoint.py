"""The persistent checkpoint: one directory that is enough to resume a run and to use its model.

Layout (rank 0 writes it; Ray Train uploads it to ``<checkpoint_uri>/<run name>/checkpoint-<step>``)::

    model/               the HF model (save_pretrained, safetensors) and its tokenizer: loadable as is
    train_state.pt       optimizer, LR scheduler, step, every rank's RNG states, the resume key
    summary.json         loss curve so far, throughput, callback results: what the driver reports
    lmforge_config.json  the resolved LifecycleConfig the run was started with

The weights live only in ``model/`` (not duplicated in ``train_state.pt``): safetensors round-trips
float32 exactly, so a resumed run continues bit for bit. The *resume key* holds every value that
changes the meaning of "step S" (schedule, batch size, world size, seed, data mixture); resuming
with a different one is refused loudly instead of silently training a different run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.common.config import to_dict
from components.common.errors import RecoveryError

MODEL_DIR = "model"
STATE_FILE = "train_state.pt"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "lmforge_config.json"


def capture_rng() -> dict[str, Any]:
    """This process's RNG states, in types ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {k: np.asarray(v).tolist() for k, v in np_state["state"].items()}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        {**np_state, "state": {k: np.asarray(v, dtype=np.uint64) for k, v in np_state["state"].items()}}
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def write_checkpoint(path: Path, state: Any, *, rng_states: list[dict], resume_key: dict, summary: dict) -> None:
    """Write the checkpoint of TrainState ``state`` into the (empty) directory ``path``."""
    state.module.save_pretrained(path / MODEL_DIR)
    state.tokenizer.save_pretrained(path / MODEL_DIR)
    torch.save(
        {
            "step": state.step,
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "rng": rng_states,
            "resume_key": resume_key,
        },
        path / STATE_FILE,
    )
    (path / SUMMARY_FILE).write_text(json.dumps(summary))
    (path / CONFIG_FILE).write_text(json.dumps(to_dict(state.spec.cfg), indent=2, default=str))


def read_train_state(path: Path, *, resume_key: dict) -> dict[str, Any]:
    """Load ``train_state.pt`` and refuse it if it belongs to a differently configured run."""
    saved = torch.load(path / STATE_FILE, weights_only=True)
    differs = {k: (saved["resume_key"].get(k), v) for k, v in resume_key.items() if saved["resume_key"].get(k) != v}
    if differs:
        detail = ", ".join(f"{k}: checkpoint has {old!r}, this run has {new!r}" for k, (old, new) in differs.items())
        raise RecoveryError(
            f"checkpoint {path} was written by a differently configured run ({detail}); "
            "restore the original settings or train into a fresh checkpoint location"
        )
    return saved


def read_summary(path: Path) -> dict[str, Any]:
    return json.loads((path / SUMMARY_FILE).read_text())
