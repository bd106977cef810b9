"""How the workers split the model (``pretrain.parallelism``): DDP replicas or FSDP2 shards.

``ddp``  every worker holds the whole model and AdamW state; gradients are all-reduced (Ray Train's
         ``prepare_model``). Simple, but each worker needs memory for the full training state.
``fsdp`` FSDP2 (``torch.distributed.fsdp.fully_shard``) on every decoder layer and on the root: each
         parameter becomes a ``DTensor`` sharded on dim 0 across the workers, and AdamW's
         ``exp_avg``/``exp_avg_sq`` follow it, so a worker holds about ``1 / world_size`` of the
         training state. A layer's parameters are all-gathered for its forward and backward only.

What changes downstream under FSDP, and the helpers here for it:

* a rank *owns* the local shards (:func:`local_tensor`) of every parameter and of its optimizer
  state: in-memory snapshots copy exactly those (``components/resilience``), no ownership split;
* persistent checkpoints and the published HF model need the full tensors: :func:`full_state_dicts`
  gathers them on rank 0 (a collective: every rank calls it), and :func:`load_full_optimizer_state`
  shards a full optimizer state back into a wrapped model at *any* world size
  (``torch.distributed.checkpoint.state_dict`` helpers, so the FQN mapping and DTensor placement are
  torch's, not ours). The weights themselves are loaded into the bare module before it is wrapped.

Runs on CPU with gloo (the tests) and on GPU with NCCL alike: the device mesh takes the device type
of the worker's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

DDP, FSDP = "ddp", "fsdp"
#: ``train_state.pt``'s ``optimizer_format`` for an optimizer state gathered by :func:`full_state_dicts`
FULL_FQN = "full-fqn"


def wrap_model(module: torch.nn.Module, parallelism: str, *, world_size: int, device: torch.device) -> torch.nn.Module:
    """The model to train for ``parallelism``; build the optimizer from ``module`` *after* this call.

    ``fsdp`` shards ``module`` in place (its parameters become DTensors) and returns it; ``ddp`` returns
    the DDP wrapper from Ray Train (``module`` keeps plain, replicated parameters).
    """
    if parallelism == FSDP:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        module.to(device)
        mesh = init_device_mesh(device.type, (world_size,))
        # One FSDP unit per decoder layer: only one layer's full parameters exist at a time. The root
        # unit holds the rest (embedding, tied LM head, final norm).
        for layer in decoder_layers(module):
            fully_shard(layer, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module
    if parallelism == DDP:
        import ray.train.torch

        return ray.train.torch.prepare_model(module)
    from components.common.errors import ConfigError

    raise ConfigError(f"pretrain.parallelism must be ddp or fsdp, got {parallelism!r}")


def decoder_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks of a Hugging Face causal LM (``model.layers`` for Llama)."""
    layers = getattr(getattr(module, "model", None), "layers", None)
    if layers is None:
        raise ValueError(
            f"{type(module).__name__} has no model.layers; pretrain.parallelism=fsdp shards Llama-style models only"
        )
    return list(layers)


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether ``module``'s parameters are FSDP2 shards (DTensors) rather than full replicas."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t``: the local shard of a DTensor (sharing its storage), else ``t`` itself."""
    from torch.distributed.tensor import DTensor

    if not isinstance(t, DTensor):
        return t
    with torch.no_grad():  # a plain view of the shard, not an autograd node
        return t.to_local()


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """``(model, optimizer)`` state dicts with full tensors on CPU, on rank 0; empty on the others.

    A collective under FSDP: every rank must call it. The optimizer state is keyed by parameter
    name (FQN), which is what :func:`load_full_optimizer_state` takes back.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's full state dict on CPU, on rank 0 (empty on the others); a collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Shard a full, FQN-keyed optimizer state (:func:`full_state_dicts`) into ``optimizer``.

    Every rank passes the same full state and keeps its own shard of it, so a checkpoint written at one
    world size loads at another.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def min_over_ranks(values: Sequence[int], group: Any = None) -> list[int]:
    """Element-wise minimum of ``values`` over the ranks of ``group`` (None: the default group), in one
    all-reduce; every rank must call it with as many values."""
    import torch.distributed as dist

    reduced = torch.tensor(list(values), dtype=torch.int64)
    dist.all_reduce(reduced, op=dist.ReduceOp.MIN, group=group)
    return reduced.tolist()
