"""A tiny Llama training state and a step function mirroring ``components/training/loop.py``, without
Ray: forward → backward → clip → ``pre_optimizer_step`` → optimizer and LR step → ``post_step``.

Attention dropout is on, so every forward pass draws from the torch RNG: a restore that missed the
RNG stream would change the next losses. Batches are a pure function of the step, as in the trainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from components.common.models import llama_config
from components.training.callbacks import TrainState
from components.training.loop import _adamw
from components.training.parallel import FSDP, wrap_model
from components.training.schedule import warmup_cosine

VOCAB, SEQ_LEN, BATCH = 512, 32, 4


def make_state(
    seed: int = 0, *, intermediate_size: int | None = None, world_size: int = 1, rank: int = 0, fsdp: bool = False
) -> TrainState:
    """A tiny Llama with AdamW and the warmup-cosine schedule; ``fsdp`` shards it over the current
    process group (``parallel.wrap_model``, as the trainer does) before the optimizer is built."""
    torch.manual_seed(seed)
    config = llama_config("tiny", vocab_size=VOCAB, seq_len=SEQ_LEN, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config.attention_dropout = 0.1
    if intermediate_size is not None:
        config.intermediate_size = intermediate_size
    module = LlamaForCausalLM(config)
    module.train()
    if fsdp:
        module = wrap_model(module, FSDP, world_size=world_size, device=torch.device("cpu"))
    optimizer = _adamw(module, lr=3e-3, weight_decay=0.1)
    scheduler = warmup_cosine(optimizer, warmup_steps=2, total_steps=20, min_lr_ratio=0.1)
    return TrainState(
        spec=None,
        rank=rank,
        world_size=world_size,
        model=module,
        module=module,
        tokenizer=None,
        optimizer=optimizer,
        scheduler=scheduler,
        batches=None,
    )


def batch_at(step: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ_LEN + 1), generator=torch.Generator().manual_seed(1000 + step))


def run_steps(state: TrainState, n: int, callbacks=()) -> list[float]:
    """Train ``n`` steps; returns each step's loss."""
    losses = []
    for _ in range(n):
        batch = batch_at(state.step)
        logits = state.model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), 1.0)
        for cb in callbacks:
            cb.pre_optimizer_step(state)
        state.optimizer.step()
        state.scheduler.step()
        state.step += 1
        losses.append(loss.item())
        state.loss_curve.append([state.step, losses[-1]])
        for cb in callbacks:
            cb.post_step(state)
    return losses
