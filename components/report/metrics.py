"""Readable names for the numbers stages report, and a reader that notes which numbers a section used.

Stage summaries name their numbers for machines (``perplexity_delta_pct``, ``forgetting/wikitext2``,
``lmforge_arithmetic_exact_match_first-integer``); the report names them for people. A section reads
its stage's metrics through :class:`Metrics`, which remembers what it read, so whatever a section has
no place for still appears, under its MLflow key, in the section's folded "other numbers" table
instead of silently vanishing when a stage starts reporting something new.
"""

from __future__ import annotations

import math
import re
from typing import Any

from components.report.blocks import Details, Est, Table, number_text

#: What the evaluate stage calls the corpora it measures perplexity on (components/evaluate/component.py).
CORPUS_LABELS = {"pretrain_corpus": "pretraining corpus", "continual_corpus": "continual corpus"}

#: Numbers every stage reports that say nothing about the model (shown elsewhere or not at all).
HOUSEKEEPING = ("stage_seconds",)


class Metrics:
    """A stage's ``metrics`` dict; ``get`` returns None for an absent key and remembers what was read."""

    def __init__(self, metrics: dict[str, Any] | None):
        self.values = {
            k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.used: set[str] = set(HOUSEKEEPING)

    def get(self, key: str) -> float | None:
        self.used.add(key)
        return self.values.get(key)

    def est(self, key: str, se_key: str | None = None) -> Est | None:
        """``key`` with its standard error (``<key>_stderr`` unless ``se_key`` names another)."""
        value = self.get(key)
        if value is None:
            return None
        se = self.get(se_key or f"{key}_stderr")
        return Est(value, None if se is None or math.isnan(se) else se)

    def change(self, before: str, after: str) -> str | None:
        """``"a → b"`` for a before/after pair (either missing: None)."""
        a, b = self.get(before), self.get(after)
        if a is None or b is None:
            return None
        return f"{number_text(a)} → {number_text(b)}"

    def mark(self, *keys: str) -> None:
        self.used.update(keys)

    def matching(self, pattern: str) -> dict[str, float]:
        """The metrics whose key matches ``pattern`` (a regex), marked used."""
        found = {k: v for k, v in self.values.items() if re.fullmatch(pattern, k)}
        self.used.update(found)
        return found

    def rest(self, ignore_prefixes: tuple[str, ...] = ()) -> Details | None:
        """The numbers no part of the section showed, folded away under their MLflow keys."""
        rows = [
            (f"`{k}`", v) for k, v in self.values.items() if k not in self.used and not k.startswith(ignore_prefixes)
        ]
        if not rows:
            return None
        return Details(f"Other numbers ({len(rows)})", [Table(("MLflow key", "value"), rows)])


def seconds_text(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


#: lm-eval's metric names (and lmforge's blank scoring, components/evaluate/blank.py) for people.
TASK_METRICS = {
    "acc": "accuracy (log-likelihood)",
    "acc_norm": "accuracy (log-likelihood per character)",
    "blank_acc": "accuracy (blank perplexity)",
    "blank_ppl": "perplexity per byte of the gold text (blank)",
    "exact_match": "exact match",
}


def task_metric_label(name: str) -> str:
    """``acc_norm`` → ``accuracy (log-likelihood per character)``; ``exact_match_first-integer`` →
    ``exact match (first-integer)``: a filtered metric keeps its filter's name."""
    if name in TASK_METRICS:
        return TASK_METRICS[name]
    base = max((b for b in TASK_METRICS if name.startswith(b + "_")), key=len, default=None)
    if base is None:
        return name.replace("_", " ")
    return f"{TASK_METRICS[base]} ({name.removeprefix(base + '_')})"


def task_label(task: str) -> str:
    """``lmforge_shakespeare_cloze`` → ``shakespeare cloze`` (the prefix only says it ships with lmforge)."""
    return task.removeprefix("lmforge_").replace("_", " ")


def stderr_key(metric: str, available) -> str | None:
    """The standard error's key of an lm-eval metric: ``<m>_stderr``, or for a filtered metric
    ``<m>_<filter>`` lm-eval's own ``<m>_stderr_<filter>`` (the gate reads them the same way)."""
    candidates = [f"{metric}_stderr"] + [f"{metric[:i]}_stderr{metric[i:]}" for i, ch in enumerate(metric) if ch == "_"]
    return next((c for c in candidates if c in available), None)


def metric_label(key: str, tasks: tuple[str, ...] = ()) -> str:
    """A readable name for an evaluation metric as the gate names it (``quantize_perplexity_delta_pct`` ...)."""
    if key == "heldout_perplexity":
        return "held-out perplexity (pretraining corpus)"
    if key == "preference_acc":
        return "preference accuracy (held-out pairs)"
    if key.startswith("perplexity_"):
        corpus = key.removeprefix("perplexity_")
        return f"perplexity ({CORPUS_LABELS.get(corpus, corpus)})"
    for task in sorted(tasks, key=len, reverse=True):
        if key.startswith(task + "_"):
            return f"{task_label(task)}: {key.removeprefix(task + '_').replace('_', ' ')}"
    for stage, label in (("quantize_", "quantization"), ("continual_", "continual")):
        if key.startswith(stage):
            rest = key.removeprefix(stage)
            words = {"pct": "%", "delta": "Δ", "size_mb": "size MB"}
            for word, repl in words.items():
                rest = rest.replace(word, repl)
            return f"{label}: {rest.replace('_', ' ')}"
    return key.replace("_", " ")


#: Words of stage metric keys for people (``heldout`` → ``held-out``); others only lose their ``_``.
KEY_WORDS = {
    "heldout": "held-out",
    "pct": "(%)",
    "mb": "(MB)",
    "ppl": "perplexity",
    "acc": "accuracy",
    "sft": "SFT",
    "dpo": "DPO",
    "rm": "reward model",
    "pref": "preference",
    "int8": "LLM.int8()",
    "stderr": "standard error",
    "delta": "Δ",
}

#: Keys whose words alone would read poorly, by stage ("" = any stage).
STAGE_KEY_LABELS = {
    ("", "tokens_per_second"): "throughput (tokens/s)",
    ("", "stage_seconds"): "time (s)",
    ("quantize", "tokens_per_s_before"): "generation tokens/s before",
    ("quantize", "tokens_per_s_after"): "generation tokens/s after",
    ("quantize", "weight_bits"): "bits per weight",
    ("quantize", "size_ratio"): "size ratio (after / before)",
    ("quantize", "llm_int8_outlier_columns"): "LLM.int8() outlier columns kept in 16-bit",
    ("register", "promoted"): "promoted (1 = yes)",
    ("evaluate", "gate_promote"): "gate verdict (1 = promote)",
}


def stage_metric_label(stage: str, key: str) -> str:
    """A readable name for metric ``key`` of ``stage`` as MLflow holds it (``lmforge show`` prints it
    beside the key): ``heldout_loss_before/wikitext2`` → ``held-out loss before (wikitext2)``,
    ``peak_memory_mb_after`` → ``peak memory (MB) after``, ``lmforge_arithmetic_exact_match_first-integer``
    → ``arithmetic: exact match (first-integer)``."""
    for where in (stage, ""):
        if (where, key) in STAGE_KEY_LABELS:
            return STAGE_KEY_LABELS[(where, key)]
    base, _, corpus = key.partition("/")
    label = _evaluate_label(base) if stage == "evaluate" else _words(base)
    return f"{label} ({corpus})" if corpus else label


def _words(key: str) -> str:
    return " ".join(KEY_WORDS.get(w, w) for w in key.split("_") if w)


#: Where a task's metric starts in an evaluate key (``lmforge_arithmetic`` | ``_exact_match_first-integer``).
TASK_METRIC_IN_KEY = re.compile("_({})(?:_|$)".format("|".join(sorted(TASK_METRICS, key=len, reverse=True))))


def _evaluate_label(key: str) -> str:
    """The gate's names (:func:`metric_label`), with a task's metrics found by lm-eval's metric names."""
    stderr = "_stderr" in key
    plain = key.replace("_stderr", "", 1)
    task_metric = TASK_METRIC_IN_KEY.search(plain)
    if plain.startswith("lmforge_") and task_metric:
        task = plain[: task_metric.start()]
        label = f"{task_label(task)}: {task_metric_label(plain[task_metric.start() + 1 :])}"
    elif plain in ("heldout_perplexity", "preference_acc") or plain.startswith(
        ("perplexity_", "quantize_", "continual_")
    ):
        label = metric_label(plain)
    else:
        label = _words(plain)
    return f"{label}, standard error" if stderr else label
