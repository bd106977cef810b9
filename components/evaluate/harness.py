"""Run lm-eval tasks shipped in ``components/evaluate/tasks/`` on an in-memory HF model, offline.

lm-eval's ``TaskManager`` indexes only lmforge's task folder (``include_defaults=False``: no scan of
lm-eval's thousands of built-in YAMLs, and no task can reach for a hub dataset). Each task is run by
its own ``simple_evaluate`` call on one shared ``HFLM`` wrapper, because the chat template is a
per-call switch and only suits generative tasks: a cloze over raw Shakespeare lines is language
modelling, a GSM8K question is a user turn. Results come back as a flat ``"<task>/<metric>"`` map
(lm-eval's ``"acc,none"`` keys with the filter name kept when it is not ``none``) plus a per-task
table for the report.
"""

from __future__ import annotations

import math
from typing import Any

from components.common.errors import ConfigError
from components.common.log import get_logger
from components.evaluate.tasks import TASKS_DIR

log = get_logger("lmforge.evaluate")

# lm-eval's default 100k bootstrap resamples only matter for non-mean aggregations; a mean's
# stderr is computed in closed form, so a small number keeps the run fast at no cost in accuracy.
BOOTSTRAP_ITERS = 1000


def task_manager():
    """A ``TaskManager`` that knows exactly the tasks shipped with lmforge."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def shipped_tasks(manager=None) -> list[str]:
    """Names of the lm-eval tasks in ``components/evaluate/tasks/``."""
    return sorted((manager or task_manager()).all_tasks)


def check_tasks(tasks: list[str], manager=None) -> None:
    """Raise ``ConfigError`` naming ``evaluate.tasks`` and the shipped tasks if any name is unknown."""
    known = shipped_tasks(manager)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ConfigError(
            f"evaluate.tasks: unknown task(s) {', '.join(map(repr, unknown))}; "
            f"the tasks shipped in {TASKS_DIR} are: {', '.join(known)}"
        )


def check_blank_tasks(blank_tasks: list[str], tasks: list[str], manager=None) -> None:
    """Raise ``ConfigError`` naming ``evaluate.blank_tasks`` if one is unknown or not multiple-choice."""
    from components.evaluate.blank import check_blank_tasks as check

    check(blank_tasks, tasks, manager or task_manager())


def flatten_task_results(task: str, results: dict[str, Any]) -> dict[str, float]:
    """``{"acc,none": 0.3, "exact_match,strict-match": 0.0, ...}`` → ``{"<task>/acc": 0.3, "<task>/exact_match_strict-match": 0.0}``.

    Non-numeric entries (the ``alias``, an ``"N/A"`` stderr) and lm-eval's ``sample_len`` (a count,
    kept in the table as ``samples``) are left out.
    """
    flat: dict[str, float] = {}
    for key, value in results.items():
        metric, _, filter_name = key.partition(",")
        if (
            metric == "sample_len"
            or isinstance(value, bool)
            or not isinstance(value, (int, float))
            or math.isnan(value)
        ):
            continue
        name = metric if filter_name in ("", "none") else f"{metric}_{filter_name}"
        flat[f"{task}/{name}"] = float(value)
    return flat


def evaluate_one(lm, task, manager, *, limit: int, use_chat: bool, seed: int) -> dict[str, Any]:
    """One ``simple_evaluate`` call: ``task`` is a shipped task's name or a built lm-eval ``Task``."""
    import lm_eval

    return lm_eval.simple_evaluate(
        model=lm,
        tasks=[task],
        task_manager=manager,
        limit=limit or None,
        apply_chat_template=use_chat,
        bootstrap_iters=BOOTSTRAP_ITERS,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )


def run_tasks(
    model,
    tokenizer,
    tasks: list[str],
    *,
    limit: int = 0,
    batch_size: int = 8,
    seed: int = 1234,
    blank_tasks: list[str] = (),
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Evaluate ``model`` on ``tasks``; returns (flat metrics, per-task table).

    Args:
        model: a ``transformers`` causal LM, already on its device.
        tokenizer: its tokenizer; its chat template, if any, is applied to generative tasks.
        tasks: names of shipped tasks (see :func:`shipped_tasks`).
        limit: at most this many examples per task (0 = all).
        batch_size: lm-eval batch size.
        seed: seeds Python, NumPy, torch and the few-shot sampler inside lm-eval.
        blank_tasks: multiple-choice tasks also scored by blank perplexity (:mod:`components.evaluate.blank`);
            their ``blank_acc``/``blank_ppl`` join the task's row (one not in ``tasks`` is scored that way only).
    """
    from lm_eval.models.huggingface import HFLM

    from components.evaluate import blank

    manager = task_manager()
    check_tasks(tasks, manager)
    blank.check_blank_tasks(list(blank_tasks), tasks, manager)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    has_chat_template = bool(getattr(tokenizer, "chat_template", None))

    metrics: dict[str, float] = {}
    table: dict[str, dict[str, Any]] = {}
    # a blank task left out of ``tasks`` is scored by blank perplexity only
    for task in [*tasks, *(t for t in blank_tasks if t not in tasks)]:
        generative = manager.task_index[task].cfg.get("output_type") == "generate_until"
        use_chat = generative and has_chat_template
        out: dict[str, Any] = {"higher_is_better": {task: {}}}
        task_metrics: dict[str, float] = {}
        if task in tasks:
            out = evaluate_one(lm, task, manager, limit=limit, use_chat=use_chat, seed=seed)
            task_metrics = flatten_task_results(task, out["results"][task])
        if task in blank_tasks:  # the same items once more, each option's filled-in text scored whole
            derived = blank.blank_task(task, manager)
            again = evaluate_one(lm, derived, manager, limit=limit, use_chat=False, seed=seed)
            task_metrics.update(flatten_task_results(task, again["results"][derived.config.task]))
            out["higher_is_better"].setdefault(task, {}).update(
                again.get("higher_is_better", {}).get(derived.config.task, {})
            )
            out.setdefault("n-samples", {}).setdefault(task, again.get("n-samples", {}).get(derived.config.task, {}))
        n = out.get("n-samples", {}).get(task, {})
        table[task] = {
            "metrics": {k.split("/", 1)[1]: v for k, v in task_metrics.items()},
            "samples": n.get("effective", n.get("original")),
            "version": out.get("versions", {}).get(task),
            "chat_template": use_chat,
            "higher_is_better": out.get("higher_is_better", {}).get(task, {}),
        }
        metrics.update(task_metrics)
        log.info("lm-eval %s: %s", task, {k: round(v, 4) for k, v in task_metrics.items()})
    return metrics, table
