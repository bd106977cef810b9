"""A bare ``torchrun`` DDP pretraining loop: the baseline lmforge's Ray Train loop is measured against.

Launched by ``tests/benchmarks/test_pretrain_throughput.py`` as
``python -m torch.distributed.run --standalone --nproc_per_node=2 torchrun_baseline.py DATASET OUT.json
[--set key=value ...]``. Same model (the profile's preset with the dataset's tokenizer, same seed),
same batch (``pretrain.batch_size`` per rank, ``model.seq_len``), same data (the batches lmforge's
:class:`~components.training.data.ResumableBatches` yields for each step and rank), same AdamW
groups, schedule and clipping, gloo on CPU, one thread per process (torchrun's default with several
processes, as Ray Train gives a 1-CPU worker). Nothing else: no per-step loss all-reduce, no
callbacks, no checkpoints. Throughput is measured as the lmforge loop measures it: steps after the
first (which pays for lazy init and DDP buckets), input tokens of all ranks per second of step time.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset")
    parser.add_argument("out")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()

    from transformers import LlamaForCausalLM

    from components.common.config import load_config
    from components.common.models import llama_config
    from components.common.tokenizer import load_tokenizer
    from components.training.data import ResumableBatches
    from components.training.schedule import warmup_cosine

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    cfg = load_config("tiny", args.overrides)
    p = cfg.pretrain
    torch.manual_seed(cfg.run.seed)
    tokenizer = load_tokenizer(os.path.join(args.dataset, "tokenizer"))
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
    model = DistributedDataParallel(module)
    decay = [q for q in module.parameters() if q.dim() >= 2]
    no_decay = [q for q in module.parameters() if q.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=p.lr,
        betas=(0.9, 0.95),
    )
    scheduler = warmup_cosine(optimizer, warmup_steps=p.warmup_steps, total_steps=p.steps, min_lr_ratio=p.min_lr_ratio)
    batches = ResumableBatches(args.dataset, seq_len=cfg.model.seq_len, batch_size=p.batch_size, seed=cfg.run.seed)

    timed_seconds, losses = 0.0, []
    for step in range(p.steps):
        t0 = time.perf_counter()
        batch = batches.batch(step, rank, world_size)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if p.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.detach())
        if step > 0:
            timed_seconds += time.perf_counter() - t0
    tokens_per_step = p.batch_size * cfg.model.seq_len * world_size
    if rank == 0:
        result = {
            "tokens_per_second": (p.steps - 1) * tokens_per_step / timed_seconds,
            "initial_loss": losses[0].item(),
            "final_loss": torch.stack(losses[-10:]).mean().item(),
            "world_size": world_size,
            "threads": torch.get_num_threads(),
        }
        with open(args.out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
