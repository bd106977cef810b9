"""The persistent checkpoint: one directory that is enough to resume a run and to use its model.

Layout (rank 0 writes it; Ray Train uploads it to ``<checkpoint_uri>/<run name>/checkpoint-<step>``)::

    model/               the HF model (save_pretrained, safetensors) and its tokenizer: loadable as is
    train_state.pt       optimizer, LR scheduler, step, every rank's RNG states, the resume key (under
                         pretrain.parallelism=fsdp the full optimizer state gathered on rank 0, keyed by name)
    summary.json         loss curve so far, throughput, callback results: what the driver reports
    lmforge_config.json  the resolved LifecycleConfig the run was started with

The weights live only in ``model/`` (not duplicated in ``train_state.pt``): safetensors round-trips
float32 exactly, so a resumed run continues bit for bit.

**Which checkpoint to resume from.** Ray Train hands the newest checkpoint it *registered* to a
restarted worker group, and it registers one only after its controller has polled every rank's
report (every two seconds): a worker lost within that window takes the report with it, and the
restart silently begins from an older checkpoint, or from step 0. So rank 0 also marks each
checkpoint complete in the store (``_COMPLETE``, written after ``ray.train.report`` has uploaded
it), and a worker group resumes from the newest checkpoint that is either registered or marked
(:func:`newest_checkpoint`). The *resume key* holds every value that
changes the meaning of "step S" (schedule, batch size, world size, seed, data mixture); resuming
with a different one is refused loudly instead of silently training a different run.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.common.config import to_dict
from components.common.errors import RecoveryError
from components.common.storage import join, open_store
from components.training.parallel import FULL_FQN

MODEL_DIR = "model"
STATE_FILE = "train_state.pt"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "lmforge_config.json"
COMPLETE = "_COMPLETE"
_NAME = re.compile(r"checkpoint-(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def mark_complete(run_uri: str, step: int, store_options: dict) -> None:
    """Record that ``<run_uri>/checkpoint-<step>`` is fully in the store (after Ray uploaded it)."""
    uri = join(run_uri, checkpoint_name(step), COMPLETE)
    open_store(uri, **store_options).write_text(uri, json.dumps({"step": step}))


def newest_checkpoint(run_uri: str, registered_path: str | None, store_options: dict) -> tuple[int, str] | None:
    """``(step, URI)`` of the newest checkpoint under ``run_uri`` that is marked complete or that Ray
    Train registered (``registered_path``: the path of ``ray.train.get_checkpoint()``), else None."""
    found: dict[int, str] = {}
    store = open_store(run_uri, **store_options)
    for uri in store.list(run_uri):
        parent, _, leaf = uri.rstrip("/").rpartition("/")
        name = _NAME.search(parent)
        if leaf == COMPLETE and name:
            found[int(name.group(1))] = parent
    if registered_path and (name := _NAME.search(registered_path.rstrip("/"))):
        found.setdefault(int(name.group(1)), join(run_uri, name.group(0)))
    if not found:
        return None
    step = max(found)
    return step, found[step]


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


def write_checkpoint(
    path: Path,
    state: Any,
    *,
    rng_states: list[dict],
    resume_key: dict,
    summary: dict,
    full_state: tuple[dict, dict] | None = None,
) -> None:
    """Write the checkpoint of TrainState ``state`` into the (empty) directory ``path``.

    ``full_state``: the ``(model, optimizer)`` state dicts gathered from FSDP shards
    (``parallel.full_state_dicts``); the optimizer state is then keyed by parameter name and marked
    ``optimizer_format: full-fqn``, which loads at any world size (``parallel.load_full_optimizer_state``).
    """
    model_state, optimizer_state = full_state or (None, state.optimizer.state_dict())
    state.module.save_pretrained(path / MODEL_DIR, state_dict=model_state)
    state.tokenizer.save_pretrained(path / MODEL_DIR)
    torch.save(
        {
            "step": state.step,
            "optimizer": optimizer_state,
            "optimizer_format": FULL_FQN if full_state else "ddp",
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
