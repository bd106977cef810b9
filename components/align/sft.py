"""The align stage, part one: supervised fine-tuning (SFT) of a base model into a chat model.

Flow: read prompt/response pairs (bad lines quarantined, :mod:`.data`) → hold out a seeded ~5 % →
put the chat template on the tokenizer (:mod:`.chat`) → measure the held-out answer loss → train
with trl's ``SFTTrainer``, loss on answer tokens only (:mod:`.trainer`) → with
``align.arithmetic_steps``, a second phase on the training side of single-digit addition
(:func:`arithmetic_phase`) → measure again → save model
and tokenizer (template included) in HF format under ``out_dir/model`` → greedy samples on three
held-out prompts → summary.

``align.num_workers = 1`` (the tiny profile) fine-tunes in the step's own process;
``align.num_workers >= 2`` runs the same :func:`fine_tune` in every worker of a Ray Train job
(:mod:`.distributed`): DDP over gloo on CPU, FSDP on GPU. Only the launch differs.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from components.align.chat import install_chat_template, prompt_messages, stop_token_ids
from components.align.data import SftPair, read_pairs, split_heldout, write_quarantine
from components.align.trainer import build_trainer, trained_model
from components.common.arithmetic import SINGLE_DIGIT_ADDITION, every_problem
from components.common.config import LifecycleConfig
from components.common.errors import DataError, LmforgeError
from components.common.log import get_logger
from components.common.storage import join

log = get_logger("lmforge.align")

SAMPLE_PROMPTS = 3
SAMPLE_MAX_NEW_TOKENS = 48


def align(
    cfg: LifecycleConfig,
    *,
    model_dir: Path,
    out_dir: Path,
    mlflow_run_id: str = "",
    model_uri: str = "",
    out_uri: str = "",
    scratch_uri: str = "",
) -> dict[str, Any]:
    """Fine-tune the model in ``model_dir`` on ``cfg.align.source``; writes ``out_dir/model``.

    With ``align.num_workers >= 2`` the fine-tune runs on Ray Train (:mod:`.distributed`): the workers
    read the model from ``model_uri`` and the split pairs from the store and rank 0 writes the model
    to ``out_uri/model`` (``out_dir`` is that output's local side); both default to ``file://`` URIs
    of the directories given, for a laptop. ``scratch_uri`` is Ray Train's storage for the run.

    Returns ``{"metrics": {...}, "samples": [...]}``; the metrics are ``sft_examples``,
    ``quarantined``, ``sft_loss_first``, ``sft_loss_last``, ``sft_heldout_answer_loss_before``,
    ``sft_heldout_answer_loss_after`` (cross-entropy per answer token in nats, as ``Trainer.evaluate``
    reports it: the mean over held-out batches of each batch's token mean) and ``steps``; also
    ``sft_heldout_examples``, ``sft_train_seconds`` and ``sft_workers``. Each sample is ``{"prompt",
    "reference", "generation", "source"}`` (``source`` = file:line of the pair).
    """
    a = cfg.align
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    pairs, bad = read_pairs(a.source, a.prompt_field, a.response_field, max_pairs=a.max_examples, store=_store_for(cfg))
    write_quarantine(out_dir / "quarantine.jsonl", bad)
    if bad:
        log.warning(
            "align: quarantined %d malformed lines of %s (see %s)", len(bad), a.source, out_dir / "quarantine.jsonl"
        )
    train, heldout = split_heldout(pairs, a.heldout_fraction, cfg.run.seed)
    log.info("align: %d training pairs, %d held out, from %s", len(train), len(heldout), a.source)

    if a.num_workers > 1:
        from components.align.distributed import sft_on_ray

        out_uri = out_uri or out_dir.resolve().as_uri()
        fit = sft_on_ray(
            cfg,
            train,
            heldout,
            model_uri=model_uri or model_dir.resolve().as_uri(),
            out_uri=out_uri,
            scratch_uri=scratch_uri or join(out_uri, "ray_train"),
        )
    else:
        fit = fine_tune(cfg, model_dir, train, heldout, out_dir / "model")
    log.info(
        "align: held-out answer loss %.4f -> %.4f (%d steps, %d worker(s), %.1fs)",
        fit["loss_before"],
        fit["loss_after"],
        fit["steps"],
        a.num_workers,
        fit["train_seconds"],
    )
    curve = [tuple(p) for p in fit["curve"]]
    samples = fit["samples"]
    (out_dir / "samples.json").write_text(json.dumps(samples, indent=2, ensure_ascii=False), encoding="utf-8")

    if mlflow_run_id:
        import mlflow

        from components.common import lineage

        mlflow.set_tracking_uri(lineage.tracking_uri(cfg))
        lineage.log_curve(mlflow_run_id, "sft_loss", curve)

    metrics = {
        "sft_examples": len(train),
        "sft_heldout_examples": len(heldout),
        "quarantined": len(bad),
        "sft_loss_first": curve[0][1],
        "sft_loss_last": curve[-1][1],
        "sft_heldout_answer_loss_before": float(fit["loss_before"]),
        "sft_heldout_answer_loss_after": float(fit["loss_after"]),
        "steps": fit["steps"],
        "sft_train_seconds": round(fit["train_seconds"], 3),
        "sft_workers": a.num_workers,
    }
    return {"metrics": metrics, "samples": samples, "loss_curve": [list(p) for p in curve]}


def fine_tune(
    cfg: LifecycleConfig, model_dir: Path, train: list[SftPair], heldout: list[SftPair], model_out: Path, *, fsdp=False
) -> dict[str, Any]:
    """The fine-tune itself, in this process: one whole run, or one Ray Train worker's share of it.

    Loads model and tokenizer from ``model_dir``, measures the held-out answer loss, trains, measures
    again; the first process (rank 0, or the only one) saves the model with its tokenizer in
    ``model_out`` and answers three held-out prompts. Returns ``{"loss_before", "loss_after",
    "curve", "steps", "train_seconds", "samples"}`` (``samples`` empty on the other ranks).
    """
    import torch
    from transformers import AutoModelForCausalLM

    a = cfg.align
    tokenizer = _load_tokenizer(model_dir)
    install_chat_template(tokenizer)
    torch.manual_seed(cfg.run.seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    # The Trainer wants an output_dir, but saves nothing there (save_strategy="no"): the stage saves
    # the final model itself, so a throwaway directory keeps out_dir to the documented files.
    with tempfile.TemporaryDirectory(prefix="lmforge-sft-") as work_dir:
        trainer, curve = build_trainer(cfg, model, tokenizer, train, heldout, Path(work_dir), fsdp=fsdp)
        loss_before = trainer.evaluate()["eval_loss"]
        started = time.time()
        trainer.train()
        points, steps = list(curve.points), trainer.state.global_step
        if a.arithmetic_steps:
            trainer, curve = arithmetic_phase(cfg, trainer.model, tokenizer, heldout, Path(work_dir) / "arithmetic")
            points += [(steps + step, loss) for step, loss in curve.points]
            steps += trainer.state.global_step
        train_seconds = time.time() - started
        loss_after = trainer.evaluate()["eval_loss"]
    if not points or not all(math.isfinite(v) for _, v in points):
        raise LmforgeError(f"SFT on {a.source} produced a non-finite training loss; lower align.lr (now {a.lr})")

    main = trainer.is_world_process_zero()
    if fsdp:
        # Every rank holds a shard: save_model gathers the full weights and rank 0 writes them.
        trainer.save_model(str(model_out))
        model = AutoModelForCausalLM.from_pretrained(str(model_out)) if main else None
    elif main:
        model = trained_model(trainer)
        model.save_pretrained(model_out)
    samples = []
    if main:
        tokenizer.save_pretrained(model_out)
        samples = generate_samples(model, tokenizer, heldout[:SAMPLE_PROMPTS])
    return {
        "loss_before": float(loss_before),
        "loss_after": float(loss_after),
        "curve": [list(p) for p in points],
        "steps": steps,
        "train_seconds": train_seconds,
        "samples": samples,
    }


def arithmetic_phase(cfg: LifecycleConfig, model, tokenizer, heldout: list[SftPair] | None, work_dir: Path):
    """Train ``model`` (in place) for ``align.arithmetic_steps`` on every training-side problem of
    single-digit addition, asked as the ``lmforge_arithmetic_1digit`` task asks it (the problem's
    prompt as the user turn, the sum as the answer); returns ``(trainer, loss_curve)``, the trainer
    evaluating on ``heldout`` (None: on two of the problems).

    Its own phase, schedule and weight decay (:func:`components.align.trainer.build_trainer`): on
    tiny, mixed into the GSM8K pairs the ~75 problems were not learned, and without decay they were
    learned late and only for some data orders (tests/benchmarks/test_arithmetic_learning.py).
    """
    problems = every_problem(split="train", **SINGLE_DIGIT_ADDITION)
    pairs = [SftPair(p.prompt, p.answer, "generated:arithmetic", i) for i, p in enumerate(problems, start=1)]
    trainer, curve = build_trainer(cfg, model, tokenizer, pairs, heldout or pairs[:2], work_dir, arithmetic_phase=True)
    trainer.train()
    return trainer, curve


def generate_samples(model, tokenizer, pairs: list[SftPair], max_new_tokens: int = SAMPLE_MAX_NEW_TOKENS) -> list[dict]:
    """Greedy answers to ``pairs``' prompts through the chat template, beside the reference answers."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    samples = []
    for pair in pairs:
        turns = pair.turns()[:-1] if pair.is_chat else prompt_messages(pair.prompt)
        inputs = tokenizer.apply_chat_template(
            turns, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(device)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = out[0, inputs["input_ids"].shape[1] :]
        samples.append(
            {
                "prompt": pair.prompt,
                "reference": pair.response,
                "generation": tokenizer.decode(new_tokens, skip_special_tokens=True),
                "source": f"{pair.file}:{pair.line}",
            }
        )
    model.train(was_training)
    return samples


def _load_tokenizer(model_dir: Path):
    from components.common.tokenizer import load_tokenizer

    try:
        return load_tokenizer(model_dir)
    except (OSError, ValueError) as e:
        raise DataError(
            f"{model_dir}: cannot load the tokenizer saved with the model ({e}); the input model directory must "
            "hold its tokenizer (tokenizer.save_pretrained into the same directory)"
        ) from e


def _store_for(cfg: LifecycleConfig):
    """An object store able to read ``align.source`` when it is an s3:// prefix, else None."""
    if not cfg.align.source.startswith("s3://"):
        return None
    from components.common.artifacts import store_options
    from components.common.storage import open_store

    return open_store(cfg.align.source, **store_options(cfg))
