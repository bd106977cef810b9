"""The align stage, part two: the preference step after SFT, chosen by ``align.method``.

- ``none``: the SFT model passes through unchanged (its own artifact, so the pipeline's shape does
  not depend on the method).
- ``dpo``: preference pairs from ``align.preferences`` (HH-RLHF or ``{prompt, chosen, rejected}``,
  malformed lines and too-long prompts quarantined with file and line, held-out side by content)
  → DPO against a frozen copy of the SFT model (:mod:`.dpo`).
- ``expert_iteration``: rounds of sample → verify → fine-tune on the arithmetic task (:mod:`.expert`).
- ``online_dpo``: the policy samples, a judge scores, best and worst form the pair (:mod:`.online`).
  ``align.judge`` chooses the judge: the arithmetic verifier, or the reward model (below) on the
  preference pairs' prompts; the judge used is in the summary (``judge``) and the MLflow tag
  ``lmforge.online_judge``.

With ``align.reward_model`` (and always for ``align.judge=reward_model``) a Bradley–Terry reward
model is trained on the pairs first, as a sub-step (its metrics prefixed ``rm_``, the model saved
under ``out_dir/reward_model``).
Writes ``out_dir/model`` (HF format, chat template included) and ``quarantine.jsonl``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from components.align.chat import install_chat_template, stop_token_ids
from components.align.inputs import source_store
from components.align.preference_data import refuse_long_prompts
from components.common.config import LifecycleConfig
from components.common.log import get_logger
from components.common.preferences import QuarantinedPair, read_preferences, split_preferences

log = get_logger("lmforge.align")


def prefer(cfg: LifecycleConfig, *, model_dir: Path, out_dir: Path, mlflow_run_id: str = "") -> dict[str, Any]:
    """Run ``align.method`` on the SFT model in ``model_dir``; returns the stage summary."""
    import torch
    from transformers import AutoModelForCausalLM

    from components.common.tokenizer import load_tokenizer

    a = cfg.align
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_out = out_dir / "model"
    if a.method == "none":
        shutil.copytree(model_dir, model_out, dirs_exist_ok=True)
        log.info("preference: align.method=none, the SFT model passes through")
        return {"metrics": {}, "method": "none"}

    tokenizer = load_tokenizer(model_dir)
    install_chat_template(tokenizer)
    torch.manual_seed(cfg.run.seed)

    def load_policy():
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True)
        model.generation_config.eos_token_id = stop_token_ids(tokenizer)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        return model

    summary: dict[str, Any] = {"method": a.method, "metrics": {}}
    curves: dict[str, list] = {}
    pairs = rm = None
    rm_judge = a.method == "online_dpo" and a.judge == "reward_model"
    if a.method == "dpo" or a.reward_model or rm_judge:
        pairs = _read_pairs(cfg, tokenizer, out_dir)
        summary["metrics"].update(pairs["metrics"])
    if a.reward_model or rm_judge:
        from components.align.reward import load_reward_model, train_reward_model

        rm = load_reward_model(model_dir, tokenizer)
        result = train_reward_model(cfg, rm, tokenizer, pairs["train"], pairs["heldout"])
        rm.save_pretrained(out_dir / "reward_model")
        tokenizer.save_pretrained(out_dir / "reward_model")
        summary["metrics"].update(result["metrics"])
        curves["rm_loss"] = result["loss_curve"]

    policy = load_policy()
    if a.method == "dpo":
        from components.align.dpo import train_dpo

        result = train_dpo(cfg, policy, load_policy(), tokenizer, pairs["train"], pairs["heldout"])
        curves["dpo_loss"] = result["loss_curve"]
    elif a.method == "expert_iteration":
        from components.align.expert import expert_iteration

        result = expert_iteration(cfg, policy, tokenizer)
        summary["rounds"] = result["rounds"]
    else:
        from components.align.online import online_dpo

        judge = None
        if rm_judge:
            from components.align.judge import RewardModelJudge

            # The reward model just trained judges the policy's replies to the pairs' training prompts.
            judge = RewardModelJudge(rm.eval(), tokenizer, pairs["train"], pairs["heldout"])
        result = online_dpo(cfg, policy, tokenizer, model_dir=model_dir, judge=judge)
        summary["rounds"] = result.get("rounds", [])
        summary["judge"] = result["judge"]
    summary["metrics"].update(result["metrics"])

    policy.save_pretrained(model_out)
    tokenizer.save_pretrained(model_out)
    if mlflow_run_id:
        import mlflow

        from components.common import lineage

        mlflow.set_tracking_uri(lineage.tracking_uri(cfg))
        for key, points in curves.items():
            lineage.log_curve(mlflow_run_id, key, [tuple(p) for p in points])
        if "judge" in summary:
            mlflow.MlflowClient().set_tag(mlflow_run_id, "lmforge.online_judge", summary["judge"])
    summary["loss_curve"] = curves.get("dpo_loss", [])
    return summary


def _read_pairs(cfg: LifecycleConfig, tokenizer, out_dir: Path) -> dict:
    """Pairs of ``align.preferences`` split by content; malformed ones and too-long prompts quarantined."""
    a = cfg.align
    pairs, bad = read_preferences(a.preferences, store=source_store(cfg, a.preferences))
    pairs, too_long = refuse_long_prompts(pairs, tokenizer, a.max_len)
    bad = [*bad, *too_long]
    _write_quarantine(out_dir / "quarantine.jsonl", bad)
    if bad:
        log.warning("preference: quarantined %d pairs of %s (see quarantine.jsonl)", len(bad), a.preferences)
    train, heldout = split_preferences(pairs, a.pref_heldout_fraction)
    if not train or not heldout:
        from components.common.errors import DataError

        raise DataError(
            f"{a.preferences}: {len(pairs)} usable pairs give {len(train)} to train and {len(heldout)} held out; "
            "both need at least one (add pairs or change align.pref_heldout_fraction)"
        )
    log.info("preference: %d training pairs, %d held out, from %s", len(train), len(heldout), a.preferences)
    metrics = {"pref_pairs": len(train), "pref_heldout_pairs": len(heldout), "pref_quarantined": len(bad)}
    return {"train": train, "heldout": heldout, "metrics": metrics}


def _write_quarantine(path: Path, bad: list[QuarantinedPair]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for q in bad:
            f.write(json.dumps({"file": q.file, "line": q.line, "reason": q.reason, "excerpt": q.excerpt}) + "\n")
