"""``pretrain.parallelism=fsdp``: FSDP2 shards on two real gloo ranks (CPU), full-state checkpoints that
load at another world size, and held-out probes that keep every rank in step.

One spawn of two ranks (``gloo.run_ranks``, no Ray) does the distributed work for the whole module;
each test checks one behaviour of its result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from components.common.errors import ConfigError
from tests.unit.resilience.tiny_training import SEQ_LEN, VOCAB, make_state, run_steps
from tests.unit.training.gloo import free_port, init_group, run_ranks

STEPS_BEFORE, STEPS_AFTER = 2, 2
WINDOWS, PROBE_BATCH = 5, 2  # 3 windows (2 batches) on rank 0, 2 windows (1 batch) on rank 1


def _windows() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, VOCAB, SEQ_LEN + 1).astype(np.int64) for _ in range(WINDOWS)]


def _fsdp_run(rank: int, world_size: int, ckpt: str) -> dict:
    """Train, write a full checkpoint after STEPS_BEFORE, train on; measure a probe; rank 0 then
    resumes the checkpoint alone (world size 1)."""
    import torch.distributed as dist

    from components.training.checkpoint import capture_rng
    from components.training.heldout import batches_per_rank, loss_sums
    from components.training.parallel import full_model_state, full_state_dicts, local_tensor

    state = make_state(fsdp=True, world_size=world_size, rank=rank)
    params = dict(state.module.named_parameters())
    out: dict = {"shapes": {n: (tuple(p.shape), tuple(local_tensor(p).shape)) for n, p in params.items()}}
    out["losses"] = run_steps(state, STEPS_BEFORE)
    out["moments"] = {n: tuple(local_tensor(state.optimizer.state[p]["exp_avg"]).shape) for n, p in params.items()}
    model_state, optimizer_state = full_state_dicts(state.model, state.optimizer)
    if rank == 0:
        state.module.save_pretrained(ckpt, state_dict=model_state)
        torch.save(
            {"optimizer": optimizer_state, "scheduler": state.scheduler.state_dict(), "rng": capture_rng()},
            Path(ckpt) / "train_state.pt",
        )
    out["losses"] += run_steps(state, STEPS_AFTER)

    mine = list(range(WINDOWS))[rank::world_size]
    batches = batches_per_rank(WINDOWS, world_size, PROBE_BATCH)
    total, count = loss_sums(state.module, _windows(), mine, PROBE_BATCH, batches=batches)
    sums = torch.tensor([total, float(count)], dtype=torch.float64)
    dist.all_reduce(sums)
    out["probe"] = float(sums[0] / sums[1])
    weights = full_model_state(state.model)
    if rank == 0:
        plain = make_state().module
        plain.load_state_dict(weights)
        total, count = loss_sums(plain, _windows(), range(WINDOWS), PROBE_BATCH)
        out["probe_unsharded"] = total / count

    dist.destroy_process_group()
    if rank == 0:
        init_group(0, 1, free_port())
        out["resumed_alone"] = _resume_alone(ckpt)
    return out


def _resume_alone(ckpt: str) -> list[float]:
    from transformers import LlamaForCausalLM

    from components.training.callbacks import TrainState
    from components.training.checkpoint import restore_rng
    from components.training.loop import _adamw
    from components.training.parallel import FSDP, load_full_optimizer_state, wrap_model
    from components.training.schedule import warmup_cosine

    saved = torch.load(Path(ckpt) / "train_state.pt", weights_only=False)
    module = LlamaForCausalLM.from_pretrained(ckpt)
    module.train()
    model = wrap_model(module, FSDP, world_size=1, device=torch.device("cpu"))
    optimizer = _adamw(module, lr=3e-3, weight_decay=0.1)
    scheduler = warmup_cosine(optimizer, warmup_steps=2, total_steps=20, min_lr_ratio=0.1)
    load_full_optimizer_state(model, optimizer, saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    restore_rng(saved["rng"])
    state = TrainState(None, 0, 1, model, module, None, optimizer, scheduler, None, step=STEPS_BEFORE)
    return run_steps(state, STEPS_AFTER)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_ranks(_fsdp_run, 2, str(tmp_path_factory.mktemp("fsdp-ckpt")))


def test_fsdp_gives_each_rank_half_of_every_parameter_and_of_its_adamw_state(ranks):
    for out in ranks:
        for name, (full, local) in out["shapes"].items():
            assert local == (full[0] // 2, *full[1:]), name  # dim 0 split evenly (all tiny dims are even)
            assert out["moments"][name] == local, name


def test_fsdp_training_follows_single_process_training(ranks):
    # Both ranks see the same batch, so their averaged gradient is the single process's gradient.
    single = run_steps(make_state(), STEPS_BEFORE + STEPS_AFTER)
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["losses"] == pytest.approx(single, rel=1e-5)


def test_a_full_fsdp_checkpoint_written_by_two_ranks_resumes_on_one(ranks):
    # Not bitwise: the clipped gradient norm is summed over two shards at world size 2, in one go at 1.
    assert ranks[0]["resumed_alone"] == pytest.approx(ranks[0]["losses"][STEPS_BEFORE:], rel=1e-5)


def test_heldout_probe_with_uneven_shares_keeps_the_ranks_in_step_and_matches_the_unsharded_loss(ranks):
    # rank 0 has two batches, rank 1 one: without the filler pass rank 0's second forward would hang
    assert ranks[0]["probe"] == ranks[1]["probe"]
    assert ranks[0]["probe"] == pytest.approx(ranks[0]["probe_unsharded"], rel=1e-6)


def test_parallelism_must_be_ddp_or_fsdp_naming_the_key(make_config):
    with pytest.raises(ConfigError, match=r"pretrain.parallelism: must be ddp or fsdp, got 'zero3'"):
        make_config("pretrain.parallelism=zero3")
