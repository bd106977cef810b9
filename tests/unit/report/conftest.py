"""Stage summaries shaped as the stages write them (their completion markers), for the report tests.

The shapes follow the stage code: curate/run.py (counts, data_card), pretrain/trainer.py (loss
curve, recoveries), continual/run.py (per-corpus metrics, held-out curves), align/sft.py and
align/prefer.py (+ dpo.py, reward.py, expert.py), quantize/run.py (sweep), evaluate/run.py (tasks
with lm-eval's stderr names, verdict from gate.py) and register/run.py (alias, outcome).
"""

from __future__ import annotations

import copy

import pytest

from components.report.build import build_report

CURVE = [[s, 7.0 - s / 10] for s in range(1, 21)]
VERDICT = {
    "promote": False,
    "reason": "champion v1 stays: primary heldout_perplexity: better by 0.5, within noise 1.4: a tie keeps the incumbent",
    "champion_version": "1",
    "champion_source": "re-evaluated",
    "z": 1.96,
    "rules": [
        {
            "rule": "primary heldout_perplexity",
            "metric": "heldout_perplexity",
            "new": 39.5,
            "champion": 40.0,
            "margin": 1.4,
            "passed": False,
            "note": "better by 0.5, within noise 1.4: a tie keeps the incumbent",
        },
        {
            "rule": "continual_forgetting <= 0.5",
            "metric": "continual_forgetting",
            "new": 0.2,
            "champion": None,
            "margin": 0.0,
            "passed": True,
            "note": "0.2 <= 0.5",
        },
    ],
}


def _curate(source: str, read: int) -> dict:
    return {
        "metrics": {"records_read": read, "records_kept": read - 40, "train_tokens": 154908, "train_documents": 50},
        "counts": [
            {"name": "read", "input": read, "kept": read, "dropped": 0, "rules": {}, "modified": {}},
            {"name": "length", "input": read, "kept": read - 40, "dropped": 40, "rules": {"too_short": 40}},
        ],
        "source": source,
        "data_card": "/worker/local/data_card.html",
    }


SUMMARIES = {
    "curate": _curate("quickstart/tinyshakespeare.txt", 3540),
    "curate_continual": _curate("quickstart/wikitext2.txt", 382),
    "pretrain": {
        "metrics": {
            "initial_loss": 7.6,
            "final_loss": 4.8,
            "tokens_per_second": 23139.9,
            "steps": 300.0,
            "heldout_loss": 4.83,
        },
        "loss_curve": CURVE,
        "recoveries": [
            {"tier": "memory", "version": 40, "failed_at_step": 42, "steps_lost": 2, "recovery_seconds": 9.5}
        ],
    },
    "continual": {
        "metrics": {
            "heldout_loss_before/tinyshakespeare": 4.83,
            "heldout_loss_after/tinyshakespeare": 5.1,
            "heldout_loss_before/wikitext2": 7.14,
            "heldout_loss_after/wikitext2": 3.92,
            "forgetting/tinyshakespeare": 0.27,
            "stability_gap/tinyshakespeare": 0.52,
            "recovery_steps/tinyshakespeare": -1,
            "adaptation/wikitext2": 3.23,
            "forgetting": 0.27,
        },
        "loss_curve": CURVE,
        "heldout_curves": {"tinyshakespeare": CURVE, "wikitext2": CURVE},
        "corpora": {"old": ["tinyshakespeare"], "new": "wikitext2"},
        "replays": [["file:///store/datasets/4b3fac956ad4f6b8", 0.1]],
    },
    "align": {
        "metrics": {"sft_examples": 950, "sft_heldout_answer_loss_before": 6.0, "sft_heldout_answer_loss_after": 4.39},
        "loss_curve": CURVE,
        "samples": [{"prompt": "What is 2+3?", "reference": "#### 5", "generation": "<script>alert(1)</script>"}],
    },
    "prefer": {
        "method": "dpo",
        "metrics": {
            "pref_pairs": 180,
            "dpo_heldout_accuracy_before": 0.45,
            "dpo_heldout_accuracy_after": 0.61,
            "dpo_heldout_margin_before": -0.02,
            "dpo_heldout_margin_after": 0.35,
            "dpo_reward_accuracy": 0.75,
            "rm_heldout_accuracy_before": 0.5,
            "rm_heldout_accuracy_after": 0.58,
        },
        "loss_curve": CURVE,
    },
    "quantize": {
        "metrics": {
            "size_mb_before": 1.0,
            "size_mb_after": 0.64,
            "size_ratio": 0.64,
            "weight_bits": 8.0,
            "perplexity_before": 40.0,
            "perplexity_after": 40.1,
            "perplexity_delta_pct": 0.25,
            "tokens_per_s_before": 850.0,
            "tokens_per_s_after": 920.0,
        },
        "method": "int8_weight_only",
        "unquantized_linears": ["lm_head"],
        "sweep": [
            {
                "bits": b,
                "group_size": 32,
                "weight_bits": b + 0.5,
                "perplexity": 40.0 + 10 / b,
                "perplexity_delta_pct": 25 / b,
            }
            for b in (2, 4, 8)
        ],
    },
    "evaluate": {
        "metrics": {
            "heldout_perplexity": 39.5,
            "heldout_perplexity_stderr": 0.7,
            "perplexity_pretrain_corpus": 39.5,
            "perplexity_pretrain_corpus_stderr": 0.7,
            "perplexity_continual_corpus": 116.19,
            "perplexity_continual_corpus_stderr": 6.53,
            "lmforge_shakespeare_cloze_acc": 0.22,
            "lmforge_shakespeare_cloze_acc_stderr": 0.0592,
            "lmforge_arithmetic_exact_match_first-integer": 0.3,
            "lmforge_arithmetic_exact_match_stderr_first-integer": 0.065,
            "preference_acc": 0.57,
            "preference_acc_stderr": 0.05,
            "quantize_perplexity_delta_pct": 0.25,
            "brand_new_number": 12.5,
            "gate_promote": 0,
        },
        "tasks": {
            "lmforge_shakespeare_cloze": {
                "metrics": {"acc": 0.22, "acc_stderr": 0.0592},
                "samples": 50,
                "chat_template": False,
            },
            "lmforge_arithmetic": {
                "metrics": {"exact_match_first-integer": 0.3, "exact_match_stderr_first-integer": 0.065},
                "samples": 50,
                "chat_template": True,
            },
        },
        "verdict": VERDICT,
        "eval_digest": "sha256:ace7",
    },
    "register": {
        "metrics": {"version": 2, "champion_version": 1, "promoted": 0},
        "model_name": "lmforge-chat",
        "registry_uri": "models:/lmforge-chat/2",
        "alias": "challenger",
        "reason": VERDICT["reason"],
        "outcome": "challenger",
    },
}
URIS = {"curate": "file:///store/datasets/aaa", "curate_continual": "file:///store/datasets/bbb"}


def summaries(**changes) -> dict:
    """A deep copy of :data:`SUMMARIES` without its curves and sweep (a test of one part need not pay
    for rendering every plot); ``stage=None`` drops a stage, ``stage={...}`` replaces it."""
    out = copy.deepcopy(SUMMARIES)
    for summary in out.values():
        for key in ("loss_curve", "heldout_curves", "sweep"):
            summary.pop(key, None)
    for stage, value in changes.items():
        if value is None:
            out.pop(stage, None)
        else:
            out[stage] = value
    return out


@pytest.fixture(scope="module")
def full_report():
    """(html, markdown, images) of a lifecycle run where every stage ran (built once: plots take time)."""
    return build_report(
        copy.deepcopy(SUMMARIES), {"pipeline": "lifecycle", "profile": "tiny", "KFP run id": "run-1"}, URIS
    )
