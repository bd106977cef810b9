"""The per-worker training loop that Ray Train runs in every worker process.

Read it top to bottom, nanoGPT style: build (or resume) → for each step: batch → forward → backward
→ clip → optimizer and LR step → mean loss over ranks → callbacks → maybe checkpoint. Distributed
differences are the wrapper of ``pretrain.parallelism`` (DDP replicas or FSDP2 shards:
:mod:`~components.training.parallel`) and one all-reduce of the loss for logging; under FSDP the
checkpoint and the published model gather the full state on rank 0 first.
Everything else (MLflow, forgetting probes, in-memory snapshots, fault injection) is a
:class:`~components.training.callbacks.Callback`.

Pretraining and continual pretraining both run this loop; a
:class:`~components.training.spec.TrainSpec` says which model to start from, which data (and replay
data) to read and which schedule to follow. Everything is read from and written to the object store
by the workers themselves (shards, start model, checkpoints through Ray Train's ``storage_path``), and
at the end rank 0 publishes the model and the training summary under ``spec.output_uri``
(:func:`publish`): the driver only ever sees URIs.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from components.common.artifacts import store_options
from components.common.errors import DataError, RecoveryError
from components.common.log import get_logger
from components.common.storage import join, open_store
from components.training.averaging import WeightAveraging
from components.training.callbacks import Callback, TrainState
from components.training.checkpoint import (
    COMPLETE,
    MODEL_DIR,
    capture_rng,
    checkpoint_name,
    mark_complete,
    newest_checkpoint,
    read_summary,
    read_train_state,
    restore_rng,
    write_checkpoint,
)
from components.training.data import ResumableBatches
from components.training.eval_checkpoints import EvalCheckpoints
from components.training.inputs import local_copy
from components.training.parallel import (
    FSDP,
    FULL_FQN,
    full_model_state,
    full_state_dicts,
    is_sharded,
    load_full_optimizer_state,
    wrap_model,
)
from components.training.probes import HeldoutProbes
from components.training.schedule import lr_scheduler
from components.training.spares import Spares
from components.training.spec import TrainSpec

log = get_logger("lmforge.training")

#: Resume-key entries a WSD decay branch may change from the run it branches off.
BRANCH_MAY_DIFFER = ("stage", "steps", "schedule", "average")


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: ``config["spec"]`` is the run's :class:`TrainSpec`."""
    import ray.train
    import ray.train.torch

    entered = time.time()
    spec: TrainSpec = config["spec"]
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    registered = ray.train.get_checkpoint()
    newest = newest_checkpoint(run_uri(spec), registered.path if registered else None, store_options(spec.cfg))
    branching = newest is None and bool(spec.branch_from_uri)  # a decay branch's first start
    with tempfile.TemporaryDirectory(prefix="lmforge-resume-") as tmp:
        resume_dir = None
        if newest is not None or branching:
            uri = newest[1] if newest is not None else spec.branch_from_uri
            resume_dir = open_store(uri, **store_options(spec.cfg)).local_dir(uri, Path(tmp))
        state, summary = build_state(spec, rank, world_size, resume_dir, branching=branching)
        callbacks = engine_callbacks(spec)
        for cb in callbacks:
            cb.load_state_dict(summary.get("callbacks", {}).get(cb.name, {}))
            if resume_dir is not None:
                cb.load_files(resume_dir)
    built = time.time()

    grad_clip, every = spec.cfg.pretrain.grad_clip, spec.cfg.pretrain.checkpoint_every
    device = ray.train.torch.get_device()
    # rank 0 also gives standby nodes their spares, for as many ranks as a node of this group runs
    standby_ranks = ctx.get_local_world_size() if rank == 0 else 0
    spares = Spares(spec.cfg.pretrain.spare_workers, spec.cfg.pretrain.spare_keep_alive_s, standby_ranks=standby_ranks)
    try:
        for cb in callbacks:
            cb.pre_train(state)
        ready = time.time()
        while state.step < spec.steps:
            train_step(state, callbacks, device=device, grad_clip=grad_clip)
            if not state.startup:
                # the step itself, not the post_step callbacks (a snapshot begins there), as a recovery is timed
                state.startup = startup_phases(entered, built, ready, state.stepped_at)
                # every rank's process marks on rank 0 (after first_step_at: not part of a recovery's time), so a
                # recovery can be told apart by where each new rank started: cold, in a cold spare, in a warm one
                state.startup_ranks = _gather_process_marks(state.startup, world_size)
                if rank == 0:
                    log.info("worker start-up (rank 0): %s", _describe_startup(state.startup))
            # after the first step: the spares' imports never compete with this group's own start-up
            spares.maybe_renew(time.time())
            if state.step in spec.branch_steps:
                save_branch_point(state, callbacks)
            if state.step % every == 0 or state.step == spec.steps:
                _checkpoint_and_report(state, callbacks)
        publish(state, callbacks)
    except BaseException as exc:
        for cb in callbacks:
            cb.on_error(exc)
        raise
    finally:
        for cb in callbacks:
            cb.close()


def engine_callbacks(spec: TrainSpec) -> list[Callback]:
    """The spec's callbacks, then weight averaging, then the held-out probes.

    Order matters after the last step: averaging loads the averaged weights into the model first,
    so the probes measure (and ``publish`` saves) the model later stages receive. Probes also come
    after the plugins' callbacks, which may restore newer weights in ``pre_train``.
    """
    callbacks = list(spec.callbacks)
    if spec.eval_checkpoint_steps:  # before averaging: the weights as trained at each step
        callbacks.append(EvalCheckpoints(spec.eval_checkpoint_steps, spec.output_uri, store_options(spec.cfg)))
    if spec.average != "none":
        callbacks.append(
            WeightAveraging(
                spec.average,
                total_steps=spec.steps,
                every=spec.average_every,
                last_k=spec.average_last_k,
                ema_decay=spec.ema_decay,
            )
        )
    if spec.probes:
        callbacks.append(
            HeldoutProbes(
                spec.probes,
                total_steps=spec.steps,
                seq_len=spec.cfg.model.seq_len,
                store_options=store_options(spec.cfg),
                cache_dir=spec.cfg.pretrain.data_cache_dir,
            )
        )
    return callbacks


def startup_phases(entered: float, built: float, ready: float, first_step: float) -> dict[str, float]:
    """Where a worker's start-up went, in seconds, from wall-clock marks (``time.time()``).

    ``build_state`` (importing transformers, tokenizer, model, DDP wrap, optimizer, data),
    ``pre_train`` (the callbacks, e.g. restoring an in-memory snapshot) and ``first_step`` (up to its
    update and the loss all-reduce, before the ``post_step`` callbacks: where a recovery's time ends); plus the
    absolute times ``process_started_at`` (this worker's process began), ``loop_at`` (this function's
    loop began) and ``first_step_at``, so that a recovery can be split against the time of the failure:
    before ``loop_at`` lie Ray Train noticing the failure, starting the new worker actors, their imports
    and the torch process group. A process that started before the failure was a spare, or one Ray
    started earlier and kept idle (``pretrain.spare_workers``: then its imports are done already).
    """
    import psutil

    from components.training.spares import PRELOADED_AT

    phases = {
        "build_state": built - entered,
        "pre_train": ready - built,
        "first_step": first_step - ready,
        "process_started_at": psutil.Process().create_time(),
        "loop_at": entered,
        "first_step_at": first_step,
    }
    if PRELOADED_AT[0] is not None:  # a process started with the spares' setup hook: when its imports were done
        phases["preloaded_at"] = PRELOADED_AT[0]
    return phases


#: the marks of :func:`startup_phases` that say where a rank's process came from
PROCESS_MARKS = ("process_started_at", "preloaded_at", "loop_at")


def _gather_process_marks(startup: dict[str, float], world_size: int) -> list[dict[str, float]]:
    """Every rank's :data:`PROCESS_MARKS`, in rank order (one small gather per worker group start)."""
    mine = {key: startup[key] for key in PROCESS_MARKS if key in startup}
    if world_size == 1 or not dist.is_initialized():
        return [mine]
    out: list = [None] * world_size
    dist.all_gather_object(out, mine)
    return out


def _describe_startup(phases: dict[str, float]) -> str:
    names = ("build_state", "pre_train", "first_step")
    return ", ".join(f"{name} {phases[name]:.2f} s" for name in names if name in phases)


def train_step(state: TrainState, callbacks: list[Callback], *, device, grad_clip: float) -> None:
    """One optimizer step on this rank's batch of ``state.step``, with the callbacks around it."""
    t0 = time.perf_counter()
    batch = state.batches.batch(state.step, state.rank, state.world_size).to(device)
    if state.step + 1 < state.spec.steps:
        state.batches.prefetch(state.step + 1, state.rank, state.world_size)
    logits = state.model(input_ids=batch[:, :-1]).logits
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip)
    state.lr = state.scheduler.get_last_lr()[0]
    for cb in callbacks:
        cb.pre_optimizer_step(state)
    state.optimizer.step()
    state.scheduler.step()
    state.step += 1
    mean_loss = _mean_over_ranks(loss.detach(), state.world_size)
    if state.step > state.start_step + 1:  # the first step pays for lazy init and DDP buckets
        state.timed_steps += 1
        state.timed_seconds += time.perf_counter() - t0
    state.loss_curve.append([state.step, mean_loss])
    state.lr_curve.append([state.step, state.lr])
    state.stepped_at = time.time()
    for cb in callbacks:
        cb.post_step(state)


def build_state(
    spec: TrainSpec, rank: int, world_size: int, resume_dir: Path | None, *, branching: bool = False
) -> tuple[TrainState, dict]:
    """Model, optimizer, schedule and data for this worker, restored from ``resume_dir`` if given.

    ``branching``: ``resume_dir`` is the branch point of another run (a WSD decay branch), whose
    resume key differs in the stage, the steps, the schedule (the LR of the stable phase is the same
    function of the step) and the averaging (a branch is the decay alternative: it averages nothing).
    """
    import ray.train.torch
    from transformers import LlamaForCausalLM

    from components.common.models import llama_config
    from components.common.tokenizer import load_tokenizer

    cfg = spec.cfg
    options, cache = store_options(cfg), cfg.pretrain.data_cache_dir
    torch.manual_seed(cfg.run.seed)  # identical init on every rank (DDP also broadcasts rank 0's)
    tokenizer = load_tokenizer(local_copy(spec.tokenizer_uri, store_options=options, cache_dir=cache))
    if resume_dir is not None:
        module = LlamaForCausalLM.from_pretrained(resume_dir / MODEL_DIR)
    elif spec.init_model_uri:
        module = LlamaForCausalLM.from_pretrained(
            local_copy(spec.init_model_uri, store_options=options, cache_dir=cache)
        )
    else:
        module = LlamaForCausalLM(
            llama_config(
                cfg.model.preset,
                vocab_size=len(tokenizer),
                seq_len=cfg.model.seq_len,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    if module.config.vocab_size < len(tokenizer):
        raise DataError(
            f"model vocabulary ({module.config.vocab_size}) is smaller than the tokenizer in {spec.tokenizer_uri} "
            f"({len(tokenizer)}); start from a model trained with this tokenizer"
        )
    model = wrap_model(module, cfg.pretrain.parallelism, world_size=world_size, device=ray.train.torch.get_device())
    optimizer = _adamw(module, lr=spec.lr, weight_decay=cfg.pretrain.weight_decay)
    scheduler = lr_scheduler(
        optimizer,
        warmup_steps=spec.warmup_steps,
        total_steps=spec.steps,
        min_lr_ratio=spec.min_lr_ratio,
        schedule=spec.schedule,
        decay_steps=spec.decay_steps,
        decay_shape=spec.decay_shape,
    )
    batches = ResumableBatches(
        spec.dataset_uri,
        seq_len=cfg.model.seq_len,
        batch_size=spec.batch_size,
        seed=cfg.run.seed,
        replay=spec.replay_uri or None,
        replay_fraction=spec.replay_fraction,
        replays=spec.replays,
        store_options=options,
        cache_dir=cache,
        order=spec.order,
        order_key=f"{spec.stage.split('-')[0]}.order",  # a decay branch's stage is continual-branch-<S>
        steps=spec.curriculum_steps or spec.steps,  # a decay branch keeps its stable run's data order
        world_size=world_size,
    )
    state = TrainState(
        spec=spec,
        rank=rank,
        world_size=world_size,
        model=model,
        module=module,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scheduler=scheduler,
        batches=batches,
        tokens_per_step=spec.batch_size * cfg.model.seq_len * world_size,
    )
    summary: dict = {}
    if resume_dir is not None:
        key = spec.resume_key(world_size)
        if branching:
            key = {k: v for k, v in key.items() if k not in BRANCH_MAY_DIFFER}
        saved = read_train_state(resume_dir, resume_key=key)
        if saved.get("optimizer_format") == FULL_FQN:
            load_full_optimizer_state(model, optimizer, saved["optimizer"])
        elif cfg.pretrain.parallelism == FSDP:
            raise RecoveryError(
                f"the checkpoint under {run_uri(spec)} holds a DDP optimizer state; pretrain.parallelism=fsdp resumes "
                "only checkpoints written with fsdp: resume with pretrain.parallelism=ddp or train into a fresh "
                "checkpoint location"
            )
        else:
            optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        restore_rng(saved["rng"][rank])
        summary = read_summary(resume_dir)
        state.step = state.start_step = saved["step"]
        state.loss_curve, state.lr_curve = summary["loss_curve"], summary["lr_curve"]
    return state, summary


def _adamw(module: torch.nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    # Decay matrices and embeddings only: shrinking norm gains and biases toward 0 only hurts.
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def _mean_over_ranks(loss: torch.Tensor, world_size: int) -> float:
    if world_size > 1:
        loss = loss.clone()
        dist.all_reduce(loss)  # SUM: gloo has no AVG
        loss /= world_size
    return loss.item()


def _checkpoint_and_report(state: TrainState, callbacks: list[Callback]) -> None:
    """Rank 0 writes the checkpoint; every rank reports (``ray.train.report`` is a barrier)."""
    import ray.train

    metrics = {
        "step": state.step,
        "loss": state.last_loss,
        "lr": state.lr,
        "tokens_per_second": state.tokens_per_second,
    }
    with tempfile.TemporaryDirectory(prefix="lmforge-ckpt-") as tmp:
        checkpoint = None
        if _write_checkpoint_dir(state, callbacks, Path(tmp)):
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_name(state.step))
    if state.rank == 0:  # report has uploaded it: mark it, so a restart finds it even if Ray never registers it
        mark_complete(run_uri(state.spec), state.step, store_options(state.spec.cfg))


def _write_checkpoint_dir(state: TrainState, callbacks: list[Callback], path: Path) -> bool:
    """Every rank takes part (RNG states, FSDP shards are gathered); rank 0 writes ``path``. True on rank 0."""
    rng_states = [capture_rng()]
    if state.world_size > 1:
        rng_states = [None] * state.world_size
        dist.all_gather_object(rng_states, capture_rng())
    # FSDP: every rank sends its shards, rank 0 receives the full model and optimizer state
    full_state = full_state_dicts(state.model, state.optimizer) if is_sharded(state.module) else None
    if state.rank != 0:
        return False
    write_checkpoint(
        path,
        state,
        rng_states=rng_states,
        resume_key=state.spec.resume_key(state.world_size),
        summary=training_summary(state, callbacks),
        full_state=full_state,
    )
    for cb in callbacks:
        cb.save_files(path)
    return True


def save_branch_point(state: TrainState, callbacks: list[Callback]) -> None:
    """Write a checkpoint a WSD decay branch starts from to ``spec.branch_point_uri`` (not a Ray checkpoint,
    so Ray Train's ``keep_checkpoints`` never prunes it); the branch is trained after this run."""
    uri = state.spec.branch_point_uri(state.step)
    with tempfile.TemporaryDirectory(prefix="lmforge-branch-") as tmp:
        if _write_checkpoint_dir(state, callbacks, Path(tmp)):
            store = open_store(uri, **store_options(state.spec.cfg))
            store.upload_dir(tmp, uri)
            store.write_text(join(uri, COMPLETE), json.dumps({"step": state.step}))
    if state.world_size > 1:
        dist.barrier()  # the branch point is in the store before any rank moves on


def run_uri(spec: TrainSpec) -> str:
    """Where Ray Train keeps this run's checkpoints (``RunConfig(storage_path, name=stage)``)."""
    return join(spec.checkpoint_uri, spec.stage)


def training_summary(state: TrainState, callbacks: list[Callback]) -> dict:
    """What a run reports: curves, throughput, and every callback's results (rank 0's view)."""
    return {
        "loss_curve": state.loss_curve,
        "lr_curve": state.lr_curve,
        "steps": state.step,
        "tokens_per_second": state.tokens_per_second,
        "train_tokens_seen": state.step * state.tokens_per_step,
        "parameters": sum(p.numel() for p in state.module.parameters()),
        "resumed_from_step": state.start_step,
        "startup": state.startup,
        "startup_ranks": state.startup_ranks,
        "callbacks": {cb.name: cb.state_dict() for cb in callbacks},
    }


def publish(state: TrainState, callbacks: list[Callback]) -> None:
    """Rank 0 uploads the trained HF model (with its tokenizer) and then the summary to ``spec.output_uri``.

    The summary goes last: its presence says the model is complete. Both are overwritten by a re-run
    (Ray Train restarting after a failure here resumes at the last step and publishes again), so a
    retried publish is idempotent.
    """
    # FSDP: gather the full weights on rank 0 (a collective, so every rank takes part)
    weights = full_model_state(state.model) if is_sharded(state.module) else None
    if state.rank == 0:
        spec = state.spec
        store = open_store(spec.output_uri, **store_options(spec.cfg))
        with tempfile.TemporaryDirectory(prefix="lmforge-model-") as tmp:
            state.module.save_pretrained(tmp, state_dict=weights)
            state.tokenizer.save_pretrained(tmp)
            store.upload_dir(tmp, join(spec.output_uri, MODEL_DIR))
        store.write_text(spec.summary_uri, json.dumps(training_summary(state, callbacks)))
    if state.world_size > 1:
        dist.barrier()  # no rank leaves (and lets the fit end) before the model is in the store
