"""A Bradley–Terry reward model trained with trl's ``RewardTrainer``.

The model is the policy's architecture with a scalar head (``AutoModelForSequenceClassification``,
``num_labels=1``) initialised from the same weights; it reads the whole rendered conversation and
scores it at the last non-pad token. Training minimises ``−log σ(r(x, y_w) − r(x, y_l))``, the
Bradley–Terry likelihood of the human choice. Held-out accuracy is the share of held-out pairs whose
chosen response scores higher, and the margin is the mean ``r(x, y_w) − r(x, y_l)``; both are what
trl's own evaluation computes, read back from ``trainer.evaluate()``.

The reward model is a judge for online DPO where no verifier exists, and a sub-step of the preference
step when ``align.reward_model`` is on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from components.align.preference_data import to_dataset
from components.align.trainer import LossCurve, common_args, quiet
from components.common.config import LifecycleConfig
from components.common.log import get_logger
from components.common.preferences import PreferencePair

log = get_logger("lmforge.align")


def load_reward_model(model_dir: Path, tokenizer):
    """The causal LM in ``model_dir`` with a fresh scalar head (its pad token tells it where a sequence ends)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), num_labels=1, dtype=torch.float32, local_files_only=True
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def train_reward_model(
    cfg: LifecycleConfig, model, tokenizer, train: list[PreferencePair], heldout: list[PreferencePair]
) -> dict[str, Any]:
    """Train ``model`` (a sequence classifier with one label, in place) on ``train``.

    Returns ``{"metrics", "loss_curve", "trainer"}``; metrics are ``rm_pairs``, ``rm_heldout_pairs``,
    ``rm_heldout_accuracy_before/after``, ``rm_heldout_margin_after``, ``rm_loss_first/last``,
    ``rm_steps`` and ``rm_samples_per_second``.
    """
    import datasets
    from trl import RewardConfig, RewardTrainer

    datasets.disable_progress_bars()
    a = cfg.align
    with tempfile.TemporaryDirectory(prefix="lmforge-rm-") as work_dir:
        args = RewardConfig(
            **common_args(
                RewardConfig,
                Path(work_dir),
                steps=a.pref_steps,
                batch_size=a.pref_batch_size,
                lr=a.pref_lr,
                seed=cfg.run.seed,
            ),
            warmup_steps=min(a.warmup_steps, a.pref_steps - 1),
            max_length=a.max_len,
        )
        curve = LossCurve(a.log_every, a.pref_steps, name="reward model")
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=to_dataset(train),
            eval_dataset=to_dataset(heldout),
            processing_class=tokenizer,
            callbacks=[curve],
        )
        quiet(trainer)
        before = trainer.evaluate()
        output = trainer.train()
        after = trainer.evaluate()
    log.info(
        "reward model: held-out accuracy %.3f -> %.3f, margin %.3f (%d pairs)",
        before["eval_accuracy"],
        after["eval_accuracy"],
        after["eval_margin"],
        len(heldout),
    )
    metrics = {
        "rm_pairs": len(train),
        "rm_heldout_pairs": len(heldout),
        "rm_heldout_accuracy_before": before["eval_accuracy"],
        "rm_heldout_accuracy_after": after["eval_accuracy"],
        "rm_heldout_margin_after": after["eval_margin"],
        "rm_loss_first": curve.points[0][1],
        "rm_loss_last": curve.points[-1][1],
        "rm_steps": trainer.state.global_step,
        "rm_samples_per_second": float(output.metrics.get("train_samples_per_second", 0.0)),
    }
    return {"metrics": metrics, "loss_curve": [list(p) for p in curve.points]}


def score(model, tokenizer, turns: list[dict], responses: list[str]) -> list[float]:
    """The reward model's scalar for each response to the conversation ``turns``."""
    import torch

    texts = [
        tokenizer.apply_chat_template([*turns, {"role": "assistant", "content": r}], tokenize=False) for r in responses
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    batch = batch.to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        rewards = model(**batch).logits[:, 0]
    model.train(was_training)
    return [float(r) for r in rewards]
