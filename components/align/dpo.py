"""Direct preference optimization (DPO) with trl's ``DPOTrainer`` against a frozen reference model.

DPO raises ``β · [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]`` through a
loss chosen by ``align.loss_type`` (``sigmoid`` is the paper's; ``ipo``, ``hinge``, ``robust`` …
are trl's variants). The reference is a second, frozen copy of the starting policy, loaded from the
same directory, so the implicit rewards measure how far training moved the policy.

Reported, from trl's own training logs: reward accuracy (share of a batch whose chosen implicit
reward beats the rejected one), reward margin, chosen/rejected log-probabilities; and, measured by
the stage itself before and after training on held-out pairs, the policy's preference accuracy
(:mod:`components.align.scoring`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from components.align.preference_data import to_dataset
from components.align.scoring import preference_accuracy
from components.align.trainer import LossCurve, common_args, quiet
from components.common.config import LifecycleConfig
from components.common.log import get_logger
from components.common.preferences import PreferencePair

log = get_logger("lmforge.align")

# trl's log keys → the stage's metric names (MLflow forbids '/' nowhere, but flat names read better).
_TRL_METRICS = {
    "rewards/accuracies": "dpo_reward_accuracy",
    "rewards/margins": "dpo_reward_margin",
    "logps/chosen": "dpo_logps_chosen",
    "logps/rejected": "dpo_logps_rejected",
}


def train_dpo(
    cfg: LifecycleConfig, model, ref_model, tokenizer, train: list[PreferencePair], heldout: list[PreferencePair]
) -> dict[str, Any]:
    """Train ``model`` (in place) with DPO on ``train``; ``ref_model`` stays frozen.

    ``tokenizer`` must carry the chat template. Returns ``{"metrics", "loss_curve"}``: metrics are
    ``dpo_pairs``, ``dpo_heldout_pairs``, ``dpo_heldout_accuracy_before/after``,
    ``dpo_heldout_margin_before/after`` (policy log-probability margin, nats), the last logged
    ``dpo_reward_accuracy``, ``dpo_reward_margin``, ``dpo_logps_chosen``, ``dpo_logps_rejected``,
    and ``dpo_loss_first/last``, ``dpo_steps``, ``dpo_samples_per_second``.
    """
    import datasets
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()
    a = cfg.align
    before = preference_accuracy(model, tokenizer, heldout)
    with tempfile.TemporaryDirectory(prefix="lmforge-dpo-") as work_dir:
        args = DPOConfig(
            **common_args(
                DPOConfig,
                Path(work_dir),
                steps=a.pref_steps,
                batch_size=a.pref_batch_size,
                lr=a.pref_lr,
                seed=cfg.run.seed,
            ),
            warmup_steps=min(a.warmup_steps, a.pref_steps - 1),
            max_length=a.max_len,
            beta=a.beta,
            loss_type=[a.loss_type],
        )
        curve = LossCurve(a.log_every, a.pref_steps, name="dpo")
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=to_dataset(train),
            processing_class=tokenizer,
            callbacks=[curve],
        )
        quiet(trainer)
        output = trainer.train()
    after = preference_accuracy(model, tokenizer, heldout)
    log.info(
        "dpo: held-out preference accuracy %.3f -> %.3f (%d pairs, %d steps)",
        before["accuracy"],
        after["accuracy"],
        len(heldout),
        trainer.state.global_step,
    )
    last = curve.logs[-1] if curve.logs else {}
    metrics = {
        "dpo_pairs": len(train),
        "dpo_heldout_pairs": len(heldout),
        "dpo_heldout_accuracy_before": before["accuracy"],
        "dpo_heldout_accuracy_after": after["accuracy"],
        "dpo_heldout_margin_before": before["margin"],
        "dpo_heldout_margin_after": after["margin"],
        "dpo_loss_first": curve.points[0][1],
        "dpo_loss_last": curve.points[-1][1],
        "dpo_steps": trainer.state.global_step,
        "dpo_samples_per_second": float(output.metrics.get("train_samples_per_second", 0.0)),
        **{name: last[key] for key, name in _TRL_METRICS.items() if key in last},
    }
    return {"metrics": metrics, "loss_curve": [list(p) for p in curve.points]}
