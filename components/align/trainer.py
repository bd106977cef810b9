"""trl's ``SFTTrainer`` set up for lmforge: prompt-completion chat data, loss on answer tokens only.

Why trl rather than a hand-written loop: its prompt-completion path renders each pair with the
tokenizer's chat template, finds where the answer starts (the rendered prompt with
``add_generation_prompt=True`` is a token prefix of prompt + answer, see :mod:`.chat`), labels every
prompt token -100, truncates to ``max_length`` and drops pairs left with no answer token. The HF
``Trainer`` underneath gives AdamW, linear warmup + cosine decay, gradient clipping and, on a GPU
cluster, the same code under Ray Train (``ray.train.huggingface.transformers.prepare_trainer``). Cost,
measured on the tiny model (2 shared CPU cores, 8 x 256 tokens): a step was no slower than a plain
torch loop over the same batches (0.61 vs 0.76 s under load); the one-off tokenization through
``datasets.map`` takes about 3 s for 1,000 pairs.

Defaults that trl changes from ``TrainingArguments`` are undone where they hurt a CPU run: bf16 and
gradient checkpointing are off (both slow a 64-wide model on CPU), nothing is saved mid-run (the
stage saves the final model itself), and no reporting integration is used (the stage logs its loss
curve to MLflow through :mod:`components.common.lineage`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from components.align.chat import answer_messages, prompt_messages
from components.align.data import SftPair
from components.common.config import LifecycleConfig
from components.common.log import get_logger

log = get_logger("lmforge.align")


class LossCurve(TrainerCallback):
    """Collects the training loss (and every other logged training number, in ``logs``) at every
    logged step and echoes the loss every ``log_every`` steps, labelled ``name``."""

    def __init__(self, log_every: int, total_steps: int, name: str = "sft") -> None:
        self.points: list[tuple[int, float]] = []
        self.logs: list[dict[str, float]] = []
        self.log_every = max(1, log_every)
        self.total_steps = total_steps
        self.name = name

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.points.append((state.global_step, float(logs["loss"])))
            self.logs.append({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
            if state.global_step % self.log_every == 0 or state.global_step == self.total_steps:
                log.info(
                    "%s step %d/%d loss %.4f lr %.2e",
                    self.name,
                    state.global_step,
                    self.total_steps,
                    logs["loss"],
                    logs.get("learning_rate", 0.0),
                )


def _as_chat(pair: SftPair) -> SftPair:
    """``pair`` as a chat record (train and held-out sets must share one format)."""
    if pair.is_chat:
        return pair
    turns = tuple((t["role"], t["content"]) for t in pair.turns())
    return SftPair(pair.prompt, pair.response, pair.file, pair.line, turns)


def to_dataset(pairs: list[SftPair]):
    """A conversational ``datasets.Dataset`` in the format trl masks by itself: prompt-completion when
    every record is a prompt/response pair, else ``messages`` for all (a pair becomes two turns)."""
    from datasets import Dataset

    if any(p.is_chat for p in pairs):
        return Dataset.from_list([{"messages": p.turns()} for p in pairs])
    return Dataset.from_list(
        [{"prompt": prompt_messages(p.prompt), "completion": answer_messages(p.response)} for p in pairs]
    )


def common_args(
    config_cls, work_dir: Path, *, steps: int, batch_size: int, lr: float, seed: int, weight_decay: float = 0.0
) -> dict:
    """``TrainingArguments`` fields every align trainer (SFT, reward model, DPO) shares.

    ``weight_decay`` is 0 unless a caller asks: on a short fine-tune decay would only shrink the
    pretrained weights toward zero (the SFT arithmetic phase asks, :func:`build_trainer`).

    trl turns activation checkpointing on by default; transformers 5 renamed the field from
    gradient_checkpointing, and the old name still works there but warns.
    """
    import torch

    names = {f.name for f in dataclasses.fields(config_cls)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {
        checkpointing: False,
        "output_dir": str(work_dir),
        "max_steps": steps,
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": batch_size,
        "learning_rate": lr,
        "lr_scheduler_type": "cosine",
        "weight_decay": weight_decay,
        "max_grad_norm": 1.0,
        "seed": seed,
        "data_seed": seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "bf16": False,
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
    }


def quiet(trainer) -> None:
    """The stage reports progress through :class:`LossCurve`; the Trainer's own printers would duplicate it."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def build_trainer(
    cfg: LifecycleConfig,
    model,
    tokenizer,
    train: list[SftPair],
    heldout: list[SftPair],
    work_dir: Path,
    *,
    fsdp: bool = False,
    arithmetic_phase: bool = False,
):
    """An ``SFTTrainer`` over ``train`` that evaluates on ``heldout``; returns ``(trainer, loss_curve)``.

    With ``arithmetic_phase`` the schedule is the SFT arithmetic phase's (``align.arithmetic_steps``,
    ``align.arithmetic_batch_size``, ``align.arithmetic_lr``, ``align.arithmetic_weight_decay``)
    instead of ``align.steps``, ``align.batch_size``, ``align.lr`` and no weight decay.

    ``tokenizer`` must already carry the chat template (:func:`components.align.chat.install_chat_template`).
    ``align.batch_size`` is per process here. Inside a Ray Train worker the HF ``Trainer`` finds the
    process group Ray Train set up and runs as one DDP replica, or, with ``fsdp``, as one FSDP shard
    (full_shard, wrapped per decoder layer: the default transformer-based policy reads the model's
    ``_no_split_modules``).
    """
    import datasets
    from trl import SFTConfig, SFTTrainer

    # trl tokenizes through datasets.map, whose per-call progress bars would flood a pod log.
    datasets.disable_progress_bars()
    a = cfg.align
    chat = any(p.is_chat for p in [*train, *heldout])
    if arithmetic_phase:
        schedule = dict(
            steps=a.arithmetic_steps,
            batch_size=a.arithmetic_batch_size,
            lr=a.arithmetic_lr,
            weight_decay=a.arithmetic_weight_decay,
        )
    else:
        schedule = dict(steps=a.steps, batch_size=a.batch_size, lr=a.lr)
    args = SFTConfig(
        **common_args(SFTConfig, work_dir, seed=cfg.run.seed, **schedule),
        warmup_steps=a.warmup_steps,
        max_length=a.max_len,
        # Loss on answers only: prompt-completion data masks the prompt; chat data masks every
        # non-assistant turn through the template's {% generation %} block.
        completion_only_loss=None if chat else True,
        assistant_only_loss=chat,
        packing=a.packing,
        packing_strategy="bfd",  # best-fit decreasing: trl's padding-free packing (position_ids, no pads)
        # full_shard: parameters re-sharded after each forward (transformers 5 spells it this way; the
        # old "full_shard auto_wrap" string is deprecated). Wrapping defaults to one unit per decoder layer.
        **({"fsdp": True, "fsdp_config": {"reshard_after_forward": True}} if fsdp else {}),
    )
    peft_config = None
    if a.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    curve = LossCurve(a.log_every, schedule["steps"], "sft arithmetic" if arithmetic_phase else "sft")
    if chat:
        train, heldout = [_as_chat(p) for p in train], [_as_chat(p) for p in heldout]
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(train),
        eval_dataset=to_dataset(heldout),
        processing_class=tokenizer,
        callbacks=[curve],
        peft_config=peft_config,
    )
    quiet(trainer)
    return trainer, curve


def trained_model(trainer):
    """The trainer's model ready to save: LoRA adapters merged into the base weights (later stages
    load a plain causal LM and never need peft)."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model
