"""Expert iteration (rejection-sampling fine-tuning) on a task with a verifier.

The prompts are ``align.prompts_per_round`` problems of the generated arithmetic task
(:mod:`components.common.arithmetic`, training side of the content-keyed split only). Each of
``align.rounds`` rounds: sample ``align.samples_per_prompt`` answers per problem from the current
policy at ``align.temperature``, add the ones the verifier accepts to the verified set (each distinct
answer once; the set grows over the rounds, as in ReST/STaR), and fine-tune the policy on the set
with the SFT trainer (answer-only loss, ``align.pref_steps`` steps at ``align.pref_lr``). "Teaching LLMs to reason with RL" finds this about as good as PPO; its only
judge is the verifier, so no reward model is needed.

Exact match (greedy, the verifier judging) is measured before the first round and after each, on
the rounds' training prompts (the task being learned: what share the policy now solves outright)
and on held-out problems (generalisation; a 0.3M-parameter model barely generalises one-digit
arithmetic, so expect the first to move and the second to stay noisy). A round whose samples hold
no correct answer trains on nothing and says so.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from components.align.data import SftPair
from components.align.sampling import exact_match, sample
from components.align.trainer import build_trainer
from components.common.arithmetic import generate, verify
from components.common.config import LifecycleConfig
from components.common.log import get_logger

log = get_logger("lmforge.align")
HELDOUT_PROBLEMS = 64  # at most; small operand ranges hold fewer distinct held-out problems


def task_room(digits: tuple[int, int], split: str) -> int:
    """How many distinct problems of ``split`` the operand range holds (generate()'s own bound for "+-"
    and a 0.2 held-out share)."""
    lo, hi = 10 ** (digits[0] - 1) if digits[0] > 1 else 0, 10 ** digits[1] - 1
    share = 0.2 if split == "heldout" else 0.8
    return max(1, int((hi - lo + 1) ** 2 * 2 * share / 2))


def heldout_count(digits: tuple[int, int]) -> int:
    """How many held-out problems to score: :data:`HELDOUT_PROBLEMS`, or what the operand range can hold."""
    return min(HELDOUT_PROBLEMS, task_room(digits, "heldout"))


def round_config(cfg: LifecycleConfig) -> LifecycleConfig:
    """The SFT settings of one fine-tuning round: the preference step's steps, batch and learning rate."""
    a = cfg.align
    steps = a.pref_steps
    # Full fine-tuning: the policy object is trained round after round in place, and LoRA would wrap it anew each time.
    align = dataclasses.replace(
        a,
        steps=steps,
        batch_size=a.pref_batch_size,
        lr=a.pref_lr,
        warmup_steps=min(a.warmup_steps, steps - 1),
        lora_r=0,
    )
    return dataclasses.replace(cfg, align=align)


def expert_iteration(cfg: LifecycleConfig, model, tokenizer) -> dict[str, Any]:
    """Run the rounds on ``model`` in place. Returns ``{"metrics", "rounds"}``; metrics are
    ``ei_exact_match_before`` and ``ei_exact_match_round_<r>`` (training prompts),
    ``ei_heldout_exact_match_before/round_<r>``, ``ei_kept_round_<r>`` (verified samples trained on) and
    ``ei_sample_accuracy_round_<r>`` (share of all samples that were correct)."""
    a = cfg.align
    digits = (a.task_digits[0], a.task_digits[1])
    pool = generate(a.prompts_per_round, split="train", seed=cfg.run.seed, digits=digits)
    heldout = generate(heldout_count(digits), split="heldout", seed=cfg.run.seed, digits=digits)
    before = exact_match(model, tokenizer, pool)
    metrics: dict[str, float] = {
        "ei_exact_match_before": before,
        "ei_heldout_exact_match_before": exact_match(model, tokenizer, heldout),
    }
    rounds = []
    log.info("expert iteration: exact match %.3f on the training prompts before round 1", before)
    train_cfg = round_config(cfg)
    verified: dict[tuple[str, str], SftPair] = {}
    problems = pool
    for r in range(1, a.rounds + 1):
        samples = sample(
            model, tokenizer, [p.prompt for p in problems], n=a.samples_per_prompt, temperature=a.temperature
        )
        correct = 0
        for problem, answers in zip(problems, samples, strict=True):
            for answer in answers:
                if verify(answer, problem.answer):
                    correct += 1
                    verified.setdefault(
                        (problem.prompt, answer), SftPair(problem.prompt, answer, "generated:arithmetic", r)
                    )
        kept = list(verified.values())
        if kept:
            with tempfile.TemporaryDirectory(prefix="lmforge-ei-") as work_dir:
                # The held-out set of the SFT trainer is unused here (exact match is the measure).
                trainer, _ = build_trainer(train_cfg, model, tokenizer, kept, kept[:1], Path(work_dir))
                trainer.train()
        else:
            log.warning(
                "expert iteration round %d: no verified-correct sample among %d; nothing to train on",
                r,
                len(problems) * a.samples_per_prompt,
            )
        score = exact_match(model, tokenizer, pool)
        heldout_score = exact_match(model, tokenizer, heldout)
        sample_accuracy = correct / (len(problems) * a.samples_per_prompt)
        log.info(
            "expert iteration round %d: %d verified samples kept (sample accuracy %.3f); exact match %.3f on the "
            "training prompts, %.3f held out",
            r,
            len(kept),
            sample_accuracy,
            score,
            heldout_score,
        )
        metrics[f"ei_exact_match_round_{r}"] = score
        metrics[f"ei_heldout_exact_match_round_{r}"] = heldout_score
        metrics[f"ei_kept_round_{r}"] = len(kept)
        metrics[f"ei_sample_accuracy_round_{r}"] = sample_accuracy
        rounds.append(
            {
                "round": r,
                "kept": len(kept),
                "sample_accuracy": sample_accuracy,
                "exact_match": score,
                "heldout_exact_match": heldout_score,
            }
        )
    return {"metrics": metrics, "rounds": rounds}
