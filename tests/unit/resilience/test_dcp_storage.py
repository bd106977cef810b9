"""DCP storage backed by the keepers: the blob rules of a keeper (plain Python), then real
``dcp.save``/``dcp.async_save``/``dcp.load`` through real keeper actors on the 4-node Ray cluster."""

from __future__ import annotations

import time
import uuid
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from components.common.config import load_config
from components.common.errors import ConfigError, DataError, RecoveryError
from components.resilience.keeper import MIB, MissingPieceError
from components.resilience.piece import checksum

# DCP warns on every single-process save/load ("torch.distributed is ... uninitialized"): expected here.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def node_keeper(budget_mb: int = 1):
    from components.resilience.keeper_actor import NodeKeeper

    return NodeKeeper(budget_mb, expected_version_bytes=0)


# ---------------------------------------------------------------------- blob rules of a keeper


def test_blob_round_trips_with_its_checksum_and_counts_against_the_budget():
    keeper = node_keeper()
    keeper.put_blob("dcp/a/x", b"hello", checksum(b"hello"))
    assert keeper.get_blob("dcp/a/x") == (b"hello", checksum(b"hello"))
    assert keeper.memory_used() == 5
    keeper.put_blob("dcp/a/x", b"hi", checksum(b"hi"))  # a replaced blob frees its old bytes
    assert keeper.memory_used() == 2


def test_blob_whose_bytes_do_not_match_its_checksum_is_refused():
    keeper = node_keeper()
    with pytest.raises(DataError, match="dcp/a/x"):
        keeper.put_blob("dcp/a/x", b"hello", checksum(b"hellO"))
    assert keeper.list_blobs("") == []


def test_blob_beyond_the_budget_is_refused_naming_the_knob():
    keeper = node_keeper(budget_mb=1)
    keeper.put_blob("dcp/a/0", bytes(MIB // 2), checksum(bytes(MIB // 2)))
    big = bytes(MIB // 2 + 1)
    with pytest.raises(ConfigError, match="resilience.keeper_memory_mb=1"):
        keeper.put_blob("dcp/a/1", big, checksum(big))
    assert keeper.list_blobs("dcp/") == ["dcp/a/0"]


def test_missing_blob_raises_missing_piece_error():
    with pytest.raises(MissingPieceError, match="dcp/a/x"):
        node_keeper().get_blob("dcp/a/x")


def test_drop_blobs_frees_only_the_prefix():
    keeper = node_keeper()
    for key in ("dcp/a/0", "dcp/a/1", "dcp/ab/0"):
        keeper.put_blob(key, b"xyz", checksum(b"xyz"))
    assert keeper.drop_blobs("dcp/a/") == 2
    assert keeper.list_blobs("dcp/") == ["dcp/ab/0"] and keeper.memory_used() == 3


# ---------------------------------------------------------------------- DCP through keeper actors


def tiny_llama(seed: int):
    from transformers import LlamaForCausalLM

    from components.common.models import llama_config

    torch.manual_seed(seed)
    config = llama_config("tiny", vocab_size=512, seq_len=32, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config)


def trained(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A tiny Llama after two AdamW steps, so the optimizer has moments and a step count."""
    model = tiny_llama(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(seed))
    for _ in range(2):
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def training_state(model, optimizer) -> dict:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd, "extra": {"step": 7, "data_position": [3, 1, 4]}}


def restored_state(keepers, checkpoint_id: str) -> dict:
    """Load into a fresh model and optimizer (different seed), as a restarted worker would."""
    from components.resilience.dcp_storage import KeeperStorageReader

    model = tiny_llama(seed=999)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = training_state(model, optimizer)
    state["extra"] = {"step": 0, "data_position": [0, 0, 0]}
    dcp.load(state, storage_reader=KeeperStorageReader(keepers, checkpoint_id))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return training_state(model, optimizer) | {"extra": state["extra"]}


def assert_bitwise_equal(got, want, path: str = "") -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype and torch.equal(got, want), path
    elif isinstance(want, dict):
        assert set(got) == set(want), path
        for key in want:
            assert_bitwise_equal(got[key], want[key], f"{path}/{key}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_bitwise_equal(g, w, f"{path}/{i}")
    else:
        assert got == want, path


@pytest.fixture(scope="module")
def keepers(ray_cluster):
    """One set of keepers for the module (starting 4 actor processes costs ~4 s on 2 cores); each test
    uses its own checkpoint id, and blob keys are namespaced by it."""
    from components.resilience.keeper_actor import start_keepers, stop_keepers

    run = f"dcp-{uuid.uuid4().hex[:8]}"
    yield start_keepers(run, load_config("tiny", ["resilience.keeper_memory_mb=64"]), expected_version_bytes=0)
    stop_keepers(run)


def save(keepers, state: dict, checkpoint_id: str, **writer_options) -> None:
    from components.resilience.dcp_storage import KeeperStorageWriter

    dcp.save(state, checkpoint_id=checkpoint_id, storage_writer=KeeperStorageWriter(keepers, **writer_options))


def test_save_then_load_round_trips_model_and_adamw_state_bitwise(keepers):
    state = training_state(*trained(seed=0))
    t0 = time.perf_counter()
    save(keepers, state, "step-2")
    t1 = time.perf_counter()
    restored = restored_state(keepers, "step-2")
    t2 = time.perf_counter()
    assert_bitwise_equal(restored, state)
    assert restored["optim"]["state"]["model.norm.weight"]["step"] == 2
    size = sum(t.nbytes for t in state["model"].values()) / MIB
    print(f"\ntiny Llama ({size:.2f} MiB of weights) + AdamW: dcp.save {t1 - t0:.3f} s, dcp.load {t2 - t1:.3f} s")


def test_each_rank_writes_its_data_to_its_own_nodes_keeper(keepers):
    import ray

    save(keepers, training_state(*trained(seed=0)), "where", blob_bytes=64 * 1024)
    here = ray.get_runtime_context().get_node_id()
    held = {node_id: ray.get(k.list_blobs.remote("dcp/where/")) for node_id, k in keepers.items()}
    assert len(held[here]) > 2, "a small blob_bytes should split the rank's data into several blobs"
    assert any(".metadata-" in key for key in held[here])
    assert all(keys == [] for node_id, keys in held.items() if node_id != here)


def test_async_save_completes_its_future_and_loads_back(keepers):
    from components.resilience.dcp_storage import KeeperStorageWriter

    state = training_state(*trained(seed=1))
    t0 = time.perf_counter()
    future = dcp.async_save(state, checkpoint_id="async", storage_writer=KeeperStorageWriter(keepers))
    returned = time.perf_counter()
    future.result(timeout=60)
    done = time.perf_counter()
    assert_bitwise_equal(restored_state(keepers, "async"), state)
    print(f"\ndcp.async_save to keepers: returned after {returned - t0:.3f} s, done after {done - t0:.3f} s")


def test_corrupted_blob_is_detected_and_named(keepers):
    import ray

    save(keepers, training_state(*trained(seed=0)), "bad")
    holder = keepers[ray.get_runtime_context().get_node_id()]
    data_blob = next(key for key in ray.get(holder.list_blobs.remote("dcp/bad/")) if "/__0_" in key)
    ray.get(holder.inject_blob_corruption.remote(data_blob))
    with pytest.raises(CheckpointException) as caught:
        restored_state(keepers, "bad")
    (error, _trace), *_ = caught.value.failures.values()
    assert isinstance(error, RecoveryError)
    assert data_blob in str(error) and "checksum" in str(error)


def test_saving_again_under_the_same_id_replaces_the_previous_save(keepers):
    import ray

    from components.resilience.dcp_storage import drop_checkpoint

    def used() -> int:
        return sum(ray.get([k.memory_used.remote() for k in keepers.values()]))

    before = used()
    save(keepers, training_state(*trained(seed=0)), "latest")
    one_save = used() - before
    newer = training_state(*trained(seed=2))
    save(keepers, newer, "latest")
    assert used() - before == pytest.approx(one_save, rel=0.01)
    assert_bitwise_equal(restored_state(keepers, "latest"), newer)
    assert drop_checkpoint(keepers, "latest") > 0
    assert used() == before


def test_loading_a_checkpoint_never_saved_names_it(keepers):
    from components.resilience.dcp_storage import KeeperStorageReader

    with pytest.raises(RecoveryError, match="'nothing' is in none of the 4 keepers"):
        KeeperStorageReader(keepers, "nothing").read_metadata()


def test_checkpoint_id_with_a_slash_is_refused():
    from components.resilience.dcp_storage import KeeperStorageWriter

    with pytest.raises(ConfigError, match="without '/'"):
        KeeperStorageWriter({}, "runs/a")


def test_checkpoint_outlives_the_process_that_wrote_it(keepers):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    elsewhere = next(node_id for node_id in keepers if node_id != here)

    @ray.remote(num_cpus=0)
    class TrainingWorker:
        def checkpoint(self, keepers) -> str:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                save(keepers, training_state(*trained(seed=3)), "outlived")
            return ray.get_runtime_context().get_node_id()

    worker = TrainingWorker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(elsewhere, soft=False)).remote()
    assert ray.get(worker.checkpoint.remote(keepers), timeout=120) == elsewhere
    ray.kill(worker)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(worker.checkpoint.remote(keepers), timeout=30)
    assert ray.get(keepers[elsewhere].list_blobs.remote("dcp/outlived/")), "the data lives on the writer's node"
    assert_bitwise_equal(restored_state(keepers, "outlived"), training_state(*trained(seed=3)))
