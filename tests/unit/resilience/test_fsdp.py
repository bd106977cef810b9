"""In-memory snapshots under ``pretrain.parallelism=fsdp``: a rank snapshots its own DTensor shards and
restores them with no help from other ranks; a snapshot refuses another world size or parallelism;
and a worker crash in a real Ray Train run resumes with the uninterrupted loss curve, bitwise.

The snapshot tests run two gloo ranks without Ray (``gloo.run_ranks``, one spawn for the module);
the crash test runs on the shared multi-node test cluster (``cluster.py``) like ``test_recovery.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.training.callbacks import Callback
from tests.unit.resilience.cluster import RESILIENT_TRAINING, train_on_cluster
from tests.unit.resilience.tiny_training import make_state, run_steps
from tests.unit.training.gloo import free_port, init_group, run_ranks

WORLD = 2
STEPS_BEFORE, STEPS_AFTER = 2, 3


class Fence(Callback):
    def __init__(self, engine) -> None:
        self.engine = engine

    def pre_optimizer_step(self, state) -> None:
        self.engine.fence()


def _snapshot_and_restore(rank: int, world_size: int) -> dict:
    """Snapshot at STEPS_BEFORE while training goes on; restore it into a fresh, differently initialised
    model and optimizer and train the same steps again. Rank 0 then tries the snapshot elsewhere."""
    import torch.distributed as dist

    from components.common.errors import RecoveryError
    from components.resilience.payload import frame
    from components.resilience.recovery import check_group
    from components.resilience.snapshot import SnapshotEngine
    from components.resilience.state import unpack_from
    from components.training.parallel import local_tensor

    state = make_state(fsdp=True, world_size=world_size, rank=rank)
    run_steps(state, STEPS_BEFORE)
    engine = SnapshotEngine()
    engine.begin(state)
    out: dict = {"continued": run_steps(state, STEPS_AFTER, [Fence(engine)])}
    snapshot = engine.wait()
    data = bytes(snapshot.data)
    engine.close()
    params = dict(state.module.named_parameters())
    out["layout"] = snapshot.layout.to_dict()
    out["names"] = list(params)
    out["local_shapes"] = {n: list(local_tensor(p).shape) for n, p in params.items()}
    out["full_param_bytes"] = sum(p.numel() * p.element_size() for p in params.values())

    fresh = make_state(seed=1, fsdp=True, world_size=world_size, rank=rank)  # other weights, no AdamW state
    out["restored_step"] = unpack_from(data, snapshot.layout, fresh)
    out["resumed"] = run_steps(fresh, STEPS_AFTER)

    dist.destroy_process_group()
    if rank == 0:
        init_group(0, 1, free_port())
        payload = frame(snapshot.layout, data)
        for key, other in (("alone", make_state(fsdp=True)), ("replicas", make_state(world_size=world_size))):
            try:
                check_group(payload, 0, other)
            except RecoveryError as e:
                out[key] = str(e)
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_ranks(_snapshot_and_restore, WORLD)


def test_a_rank_snapshots_its_local_shard_of_every_parameter_and_of_its_adamw_state(ranks):
    for out in ranks:
        layout = out["layout"]
        assert layout["sharded"] and layout["world_size"] == WORLD
        entries = layout["entries"]
        assert {e["name"] for e in entries} == set(out["names"])  # no ownership split: every name
        for e in entries:
            if e["part"] in ("param", "exp_avg", "exp_avg_sq"):
                assert e["sharded"] and list(e["shape"]) == out["local_shapes"][e["name"]], e
        param_bytes = sum(e["nbytes"] for e in entries if e["part"] == "param")
        assert param_bytes == out["full_param_bytes"] // WORLD


def test_each_rank_restores_its_own_snapshot_alone_and_continues_bitwise(ranks):
    for out in ranks:
        assert out["restored_step"] == STEPS_BEFORE
        assert out["resumed"] == out["continued"]


def test_a_sharded_snapshot_refuses_another_world_size_saying_so(ranks):
    assert "snapshot was taken by 2 ranks, this worker group has 1" in ranks[0]["alone"]
    assert "not re-sharded" in ranks[0]["alone"] and "falls back to the next tier" in ranks[0]["alone"]


def test_a_sharded_snapshot_refuses_ddp_replicas_naming_the_key(ranks):
    assert "holds FSDP shards but this worker group trains with pretrain.parallelism=ddp" in ranks[0]["replicas"]


# ---------------------------------------------------------------------- Ray Train, real faults

STEPS = 8


def _config(make_config, *overrides: str):
    return make_config(
        *RESILIENT_TRAINING,
        "pretrain.parallelism=fsdp",
        f"pretrain.steps={STEPS}",
        "pretrain.checkpoint_every=4",  # a crash after step 4 also resumes an FSDP checkpoint first
        "pretrain.max_failures=2",
        "resilience.persist_every=2",
        *overrides,
    )


@pytest.fixture(scope="module")
def clean_run(cluster, tiny_dataset, tmp_path_factory) -> dict:
    from components.common.config import load_config

    home = tmp_path_factory.mktemp("fsdp-clean")
    cfg = _config(lambda *o: load_config("tiny", [f"run.home={home}", *o]))
    return train_on_cluster(cfg, tiny_dataset, home) | {"home": str(home)}


def test_fsdp_run_publishes_the_full_model(clean_run):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(Path(clean_run["home"]) / "out" / "model")
    assert sum(p.numel() for p in model.parameters()) == clean_run["parameters"]  # gathered, not one shard


def test_fsdp_checkpoint_holds_the_full_optimizer_state_by_parameter_name(clean_run):
    import torch
    from transformers import LlamaForCausalLM

    checkpoint = Path(clean_run["home"]) / "ckpt" / "pretrain" / f"checkpoint-{STEPS:08d}"
    saved = torch.load(checkpoint / "train_state.pt", weights_only=True)
    model = LlamaForCausalLM.from_pretrained(checkpoint / "model")
    assert saved["optimizer_format"] == "full-fqn"
    shapes = {name: p.shape for name, p in model.named_parameters()}  # the tied LM head once, as AdamW has it
    assert {name: s["exp_avg"].shape for name, s in saved["optimizer"]["state"].items()} == shapes


def test_fsdp_worker_crash_resumes_from_each_ranks_own_shards_with_the_same_loss_curve(
    cluster, clean_run, make_config, tiny_dataset, tmp_path
):
    cfg = _config(make_config, "resilience.faults=worker_crash@step=6")
    summary = train_on_cluster(cfg, tiny_dataset, tmp_path)
    (recovery,) = summary["callbacks"]["ResilienceCallback"]["recoveries"]
    # the restarted group loads checkpoint 4 (full state, re-sharded), then its shards of snapshot 5 or 6
    assert recovery["tier"] == "memory" and recovery["version"] in (5, 6)
    assert summary["loss_curve"] == clean_run["loss_curve"]
