"""SFT on Ray Train: the one-process fine-tune (:func:`components.align.sft.fine_tune`) in every worker.

The step (the Ray Train driver) holds neither the model nor the data once the job starts. It writes
the split pairs to the store (``<out_uri>/sft_data/{train,heldout}.jsonl``, kept with the output as
the record of what was trained on and what was held out), then starts ``align.num_workers`` workers
through a ``TorchTrainer``, the launch pretraining uses (:mod:`components.training.driver`: the same
Ray session on ``pretrain.ray_address``, the same storage mapping and controller settings). Each
worker copies the model from ``model_uri`` and the pairs from the store onto its own disk, builds
the same ``SFTTrainer`` and trains. Ray Train has set up the process group (gloo on CPU, NCCL on
GPU), which the HF ``Trainer`` inside finds and uses: a ``DistributedSampler`` gives each rank its
share of every batch and the gradients are averaged (DDP), or with ``align.use_gpu`` the model is
sharded with FSDP. Rank 0 uploads the model to ``<out_uri>/model`` and its numbers to
``<out_uri>/sft_result.json``, which the driver reads back: URIs only, as on a cluster where the
step, the workers and the next step share no disk.

``align.batch_size`` stays the global batch: each of N workers takes ``batch_size / N`` pairs per
step, so N workers see the same number of pairs per step, at the same learning rate and step count,
as one process. The order differs (each rank draws from its sampler), so losses match closely, not
bitwise. ``ray.train.huggingface.transformers.prepare_trainer`` is not needed: it only adapts Ray
Data iterables, and the workers feed the trainer ``datasets.Dataset`` objects.

Resilience (restarts from a checkpoint) is not part of the align steps (issue 11): a worker failure
fails the fit (``max_failures=0``) and the step's retry starts over.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

from components.align.data import SftPair
from components.common.artifacts import store_options
from components.common.config import LifecycleConfig
from components.common.errors import TrainingJobError
from components.common.log import get_logger
from components.common.ray_session import ray_session
from components.common.storage import join, open_store

log = get_logger("lmforge.align")

RESULT_FILE = "sft_result.json"  # rank 0 writes it last: the model is complete when it exists
DATA_DIR = "sft_data"


def sft_on_ray(
    cfg: LifecycleConfig,
    train: list[SftPair],
    heldout: list[SftPair],
    *,
    model_uri: str,
    out_uri: str,
    scratch_uri: str,
) -> dict[str, Any]:
    """Fine-tune on ``align.num_workers`` Ray Train workers; returns rank 0's result (see ``fine_tune``)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from components.training.driver import ray_storage, ray_train_env

    a = cfg.align
    store = open_store(out_uri, **store_options(cfg))
    data_uri = join(out_uri, DATA_DIR)
    for name, pairs in (("train", train), ("heldout", heldout)):
        store.write_text(join(data_uri, f"{name}.jsonl"), "".join(json.dumps(_record(p)) + "\n" for p in pairs))
    result_uri = join(out_uri, RESULT_FILE)
    if store.exists(result_uri):
        store.delete(result_uri)  # a retried step must not read the result of an earlier attempt
    storage_path, filesystem = ray_storage(cfg, scratch_uri)
    trainer = TorchTrainer(
        sft_worker,
        train_loop_config={"cfg": cfg, "model_uri": model_uri, "data_uri": data_uri, "out_uri": out_uri},
        scaling_config=ScalingConfig(num_workers=a.num_workers, use_gpu=a.use_gpu),
        run_config=RunConfig(
            name="align-sft",
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    log.info(
        "align: SFT on %d Ray Train workers (%s), %d pairs per worker per step",
        a.num_workers,
        "FSDP on GPU" if a.use_gpu else "DDP",
        a.batch_size // a.num_workers,
    )
    with ray_session(cfg.pretrain.ray_address, a.num_workers, name="lmforge-sft"), ray_train_env(cfg):
        trainer.fit()
    if not store.exists(result_uri):
        raise TrainingJobError(f"align: the Ray Train fit ended but rank 0 published no {result_uri}")
    return json.loads(store.read_text(result_uri))


def sft_worker(config: dict) -> None:
    """Ray Train entry point: one rank of the fine-tune, reading and writing only through the store."""
    import ray.train

    from components.align.sft import fine_tune
    from components.training.inputs import local_copy

    cfg: LifecycleConfig = config["cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    options = store_options(cfg)
    model_dir = local_copy(config["model_uri"], store_options=options, cache_dir=cfg.pretrain.data_cache_dir)
    store = open_store(config["out_uri"], **options)
    train, heldout = (
        [_pair(json.loads(line)) for line in store.read_text(join(config["data_uri"], f"{n}.jsonl")).splitlines()]
        for n in ("train", "heldout")
    )
    # This process is one of `world`: its share of the global batch, and no further split.
    a = cfg.align
    worker_cfg = dataclasses.replace(cfg, align=dataclasses.replace(a, batch_size=a.batch_size // world, num_workers=1))
    with tempfile.TemporaryDirectory(prefix="lmforge-sft-out-") as tmp:
        fit = fine_tune(worker_cfg, model_dir, train, heldout, Path(tmp) / "model", fsdp=a.use_gpu)
        if rank == 0:
            store.upload_dir(Path(tmp) / "model", join(config["out_uri"], "model"))
            store.write_text(join(config["out_uri"], RESULT_FILE), json.dumps({**fit, "workers": world}))


def _record(pair: SftPair) -> dict:
    return {
        "prompt": pair.prompt,
        "response": pair.response,
        "file": pair.file,
        "line": pair.line,
        "messages": [list(m) for m in pair.messages],
    }


def _pair(record: dict) -> SftPair:
    return SftPair(
        record["prompt"],
        record["response"],
        record["file"],
        record["line"],
        tuple((role, content) for role, content in record["messages"]),
    )
