"""Run lm-eval tasks on an in-memory HF model: the tasks shipped in ``components/evaluate/tasks/``
(offline) and any standard lm-eval task by name whose data is reachable.

lm-eval's ``TaskManager`` indexes lmforge's task folder, plus, only when ``evaluate.tasks`` names a
standard task (``hellaswag``, ``arc_easy``, a group such as ``mmlu``), the folder of lm-eval's own
tasks that defines it: indexing all of lm-eval's ~14,000 YAMLs takes half a minute, finding the one
folder by a text scan about a second. A standard task's data comes from the Hugging Face Hub, or a
mirror (``HF_ENDPOINT``) or a pre-filled datasets cache (``HF_DATASETS_CACHE``) on a cluster without
internet; :func:`check_tasks` resolves each of its datasets' builders (metadata only, no download)
before any model is loaded, so an unreachable one is a ``ConfigError`` naming ``evaluate.tasks``, the
task, the reason and the shipped tasks that always work.

Each task is run by its own ``simple_evaluate`` call on one shared ``HFLM`` wrapper, because the chat
template is a per-call switch and only suits generative tasks: a cloze over raw Shakespeare lines is
language modelling, a GSM8K question is a user turn (and its few-shot examples earlier turns,
``fewshot_as_multiturn``). Results come back as a flat ``"<task>/<metric>"`` map (lm-eval's
``"acc,none"`` keys with the filter name kept when it is not ``none``), every score with lm-eval's
standard error beside it (``<metric>_stderr``), plus a per-task table for the report.
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Any

from components.common.errors import ConfigError
from components.common.log import get_logger
from components.evaluate.tasks import TASKS_DIR

log = get_logger("lmforge.evaluate")

# lm-eval's default 100k bootstrap resamples only matter for non-mean aggregations; a mean's
# stderr is computed in closed form, so a small number keeps the run fast at no cost in accuracy.
BOOTSTRAP_ITERS = 1000


def task_manager(tasks: list[str] = ()):
    """A ``TaskManager`` that knows the tasks shipped with lmforge and the standard ones in ``tasks``."""
    from lm_eval.tasks import TaskManager

    folders = sorted({str(f) for t in tasks for f in standard_task_folders(t)})
    return TaskManager(include_path=[str(TASKS_DIR), *folders], include_defaults=False)


def shipped_tasks() -> list[str]:
    """Names of the lm-eval tasks in ``components/evaluate/tasks/``."""
    return sorted(_shipped_manager().all_tasks)


@functools.cache
def _shipped_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


@functools.cache
def standard_task_folders(name: str) -> tuple[Path, ...]:
    """The top-level folders of lm-eval's own tasks that define task, group or tag ``name`` (() if none).

    A text scan for ``task: <name>`` / ``group: <name>`` (or, for a tag, a ``- <name>`` list item) in
    lm-eval's YAMLs; the whole top-level folder is returned because a task's YAML ``include``s
    templates beside it and a group lists subtasks in subfolders.
    """
    if name in _shipped_manager().all_tasks:
        return ()
    root = lm_eval_tasks_dir()
    quoted = r"[\"']?" + re.escape(name) + r"[\"']?\s*$"
    defines = re.compile(r"^(?:task|group)\s*:\s*" + quoted, re.M)
    listed = re.compile(r"^\s*-\s*" + quoted, re.M)
    by_definition, by_tag = set(), set()
    for path in root.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8", errors="ignore")
        if name not in text:
            continue
        top = root / path.relative_to(root).parts[0]
        if defines.search(text):
            by_definition.add(top)
        elif listed.search(text) and "tag" in text:
            by_tag.add(top)
    return tuple(sorted(by_definition or by_tag))


# dataset_path values that name a local file format (the files come with the task), not a hub dataset
LOCAL_FORMATS = {"json", "csv", "parquet", "text", "arrow", "pandas"}


def task_datasets(manager, name: str, seen: set[str] | None = None) -> set[tuple[str, str | None]]:
    """The hub datasets ``(dataset_path, dataset_name)`` task, group or tag ``name`` reads."""
    from lm_eval.tasks._index import Kind

    seen = set() if seen is None else seen
    if name in seen or name not in manager.task_index:
        return set()
    seen.add(name)
    entry = manager.task_index[name]
    cfg = entry.cfg or {}
    if entry.kind == Kind.TAG:
        members = [n for n, e in manager.task_index.items() if name in e.tags]
    elif entry.kind == Kind.GROUP:
        members = [m if isinstance(m, str) else m.get("task") for m in _as_list(cfg.get("task"))]
    else:
        path = cfg.get("dataset_path")
        if not path or path in LOCAL_FORMATS or cfg.get("custom_dataset") or Path(str(path)).exists():
            return set()
        return {(str(path), cfg.get("dataset_name"))}
    return set().union(*(task_datasets(manager, m, seen) for m in members if isinstance(m, str)), set())


def _as_list(value) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


def unreachable_reason(path: str, name: str | None) -> str | None:
    """Why hub dataset ``path`` (config ``name``) cannot be read here, or None if it can.

    ``datasets.load_dataset_builder`` resolves the dataset's files (from the hub at ``HF_ENDPOINT``,
    or from the datasets cache when offline) without downloading the data itself.
    """
    import datasets

    try:
        datasets.load_dataset_builder(path, name)
    except Exception as e:  # noqa: BLE001 - every failure means the same here: the data cannot be read
        offline = [
            v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "").lower() in ("1", "true")
        ]
        cache = os.environ.get("HF_DATASETS_CACHE") or str(Path(datasets.config.HF_DATASETS_CACHE))
        where = (
            f"{' and '.join(offline)} {'is' if len(offline) == 1 else 'are'} set and the datasets cache ({cache}) holds no copy"
            if offline
            else f"the hub at {os.environ.get('HF_ENDPOINT') or 'https://huggingface.co'} did not serve it"
        )
        return f"dataset {path!r}{f' ({name})' if name else ''} is unreachable: {where} ({type(e).__name__}: {e})"
    return None


def check_tasks(tasks: list[str], manager=None) -> None:
    """Raise ``ConfigError`` naming ``evaluate.tasks``, the task, why, and the shipped tasks, if a task
    is unknown or a standard task's data cannot be reached. Loads no model and downloads no data."""
    known = shipped_tasks()
    choices = (
        f"the tasks shipped in {TASKS_DIR} (always available, offline too) are: {', '.join(known)}; "
        "any standard lm-eval task (`lm_eval ls tasks`) works where its data is reachable"
    )
    unknown = [t for t in tasks if t not in known and not standard_task_folders(t)]
    if unknown:
        raise ConfigError(f"evaluate.tasks: unknown task(s) {', '.join(map(repr, unknown))}; {choices}")
    standard = [t for t in tasks if t not in known]
    if not standard:
        return
    manager = manager or task_manager(standard)
    for task in standard:
        if task not in manager.task_index:
            raise ConfigError(f"evaluate.tasks: lm-eval could not index task {task!r}; {choices}")
        for path, name in sorted(task_datasets(manager, task), key=str):
            reason = unreachable_reason(path, name)
            if reason:
                raise ConfigError(
                    f"evaluate.tasks: task {task!r} cannot run here: {reason}. On a cluster without internet, "
                    "point HF_ENDPOINT at a hub mirror or pre-fill the datasets cache (HF_DATASETS_CACHE); "
                    f"or choose another task: {choices}"
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
        # few-shot examples as earlier user/assistant turns, the way a chat model saw dialogues
        fewshot_as_multiturn=use_chat,
        bootstrap_iters=BOOTSTRAP_ITERS,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )


def scores_without_stderr(results: dict[str, Any]) -> list[str]:
    """lm-eval result keys (``"acc,none"``) whose ``"<metric>_stderr,<filter>"`` is missing or not a number."""
    missing = []
    for key, value in results.items():
        metric, _, filter_name = key.partition(",")
        if not filter_name or metric == "sample_len" or metric.endswith("_stderr") or isinstance(value, bool):
            continue
        se = results.get(f"{metric}_stderr,{filter_name}")
        if not isinstance(se, (int, float)) or math.isnan(se):
            missing.append(key)
    return missing


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
        tasks: names of shipped tasks (see :func:`shipped_tasks`) or of standard lm-eval tasks.
        limit: at most this many examples per task (0 = all).
        batch_size: lm-eval batch size.
        seed: seeds Python, NumPy, torch and the few-shot sampler inside lm-eval.
        blank_tasks: multiple-choice tasks also scored by blank perplexity (:mod:`components.evaluate.blank`);
            their ``blank_acc``/``blank_ppl`` join the task's row (one not in ``tasks`` is scored that way only).
    """
    from lm_eval.models.huggingface import HFLM

    from components.evaluate import blank

    manager = task_manager(tasks)
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
        no_stderr = scores_without_stderr(out["results"][task]) if task in tasks else []
        if no_stderr:
            log.warning("lm-eval %s: no standard error for %s (fewer than 2 examples?)", task, no_stderr)
        n = out.get("n-samples", {}).get(task, {})
        table[task] = {
            "metrics": {k.split("/", 1)[1]: v for k, v in task_metrics.items()},
            "samples": n.get("effective", n.get("original")),
            "version": out.get("versions", {}).get(task),
            "chat_template": use_chat,
            "num_fewshot": out.get("n-shot", {}).get(task),
            "scores_without_stderr": no_stderr,
            "higher_is_better": out.get("higher_is_better", {}).get(task, {}),
        }
        metrics.update(task_metrics)
        log.info("lm-eval %s: %s", task, {k: round(v, 4) for k, v in task_metrics.items()})
    return metrics, table
