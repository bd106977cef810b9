"""DDP replicas restored group by group, one process per rank (``torch.multiprocessing.spawn``, gloo).

Kept apart from ``tiny_training.py`` on purpose: a spawned rank imports this module afresh, and a
small ``torch.nn`` model with AdamW keeps that import to torch and ``components.resilience`` (the
tiny Llama would add transformers, ~20 s per process on a loaded 2-core box). The recovery code
under test does not care which module it restores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.common.storage import open_store
from components.resilience.codec import make_codec
from components.resilience.layout import SnapshotLayout
from components.resilience.ownership import owned_names, parameter_sizes
from components.resilience.payload import frame
from components.resilience.persist import write_pieces
from components.resilience.recovery import broadcast_owned, check_group, group_from_store, restore_own
from components.resilience.state import pack_into
from components.training.callbacks import TrainState

VOCAB, WIDTH = 64, 24


def small_state(seed: int, *, world_size: int = 1, rank: int = 0) -> TrainState:
    torch.manual_seed(seed)
    module = torch.nn.Sequential(
        torch.nn.Embedding(VOCAB, WIDTH),
        torch.nn.Linear(WIDTH, 2 * WIDTH),
        torch.nn.GELU(),
        torch.nn.Linear(2 * WIDTH, VOCAB),
    )
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return TrainState(
        spec=None, rank=rank, world_size=world_size, model=module, module=module, tokenizer=None,
        optimizer=optimizer, scheduler=scheduler, batches=None,
    )  # fmt: skip


def train(state: TrainState, steps: int) -> None:
    for _ in range(steps):
        batch = torch.randint(0, VOCAB, (4, 9), generator=torch.Generator().manual_seed(state.step))
        loss = F.cross_entropy(state.module(batch[:, :-1]).reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        state.step += 1


def persist_snapshot(state: TrainState, root: str, version: int, world_size: int, codec) -> None:
    """Every rank's share of ``state`` persisted as version ``version``, as the keepers would upload it."""
    store = open_store(root)
    for rank in range(world_size):
        owned = owned_names(parameter_sizes(state.module), rank, world_size)
        layout = SnapshotLayout.build(state.module, state.optimizer, owned)
        buffer = bytearray(layout.total_bytes)
        pack_into(buffer, layout, state)
        write_pieces(store, root, codec.encode(version, rank, frame(layout, buffer)))


def full_state(state: TrainState) -> dict[str, torch.Tensor]:
    """Every parameter and optimizer state tensor, by name."""
    out = {}
    for name, p in state.module.named_parameters():
        out[name] = p.detach().clone()
        for part, t in state.optimizer.state.get(p, {}).items():
            out[f"{name}[{part}]"] = t.clone()
    return out


def restore_rank(rank: int, world_size: int, root: str, version: int, init_file: str, expected_path: str) -> None:
    """One rank: fetch and restore its own group, then the owners broadcast; compare with the snapshot."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        state = small_state(seed=7, world_size=world_size, rank=rank)  # other weights, no optimizer state
        expected = torch.load(expected_path)
        got = group_from_store(open_store(root), root, version, rank, make_codec("xor", 2, 1))
        own = check_group(got.payload, rank, state)
        assert restore_own(own, state) == version
        before = full_state(state)
        missing = [key for key in expected if key not in before or not torch.equal(before[key], expected[key])]
        assert missing, f"rank {rank}: restoring its own group made the replica whole: the broadcast is untested"
        received = broadcast_owned(own, state)
        after = full_state(state)
        assert after.keys() == expected.keys(), sorted(set(expected) ^ set(after))
        differing = [key for key in expected if not torch.equal(after[key], expected[key])]
        assert not differing, f"rank {rank}: {differing[:5]} differ from the snapshot"
        assert received > 0
    finally:
        dist.destroy_process_group()
