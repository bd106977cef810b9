"""The evaluate stage: held-out perplexity on each curated corpus plus the shipped lm-eval tasks,
and the promotion gate's verdict against the current champion.

One model load, then two kinds of numbers. Perplexity comes from
:func:`components.training.heldout.heldout_stats`: the same windows and mean as ``heldout_loss``,
the helper every stage uses for "loss on held-out data", so the evaluate stage's headline number
(``heldout_perplexity``, on the first dataset given: the pretraining corpus) is comparable with what
pretraining, continual pretraining and quantization report. Task scores come from lm-eval through
:mod:`components.evaluate.harness`. Everything lands in ``results.json``; ``eval_table.md`` is the
same numbers as a Markdown table for the KFP UI and the run report.

Every number comes with a standard error (``<metric>_stderr``): lm-eval's for task scores, and for
perplexity one from per-document losses (:class:`components.training.heldout.HeldoutStats`), so the
gate (:mod:`components.evaluate.gate`) can tell a real difference from noise.

The champion's numbers are only comparable when they were produced by the same evaluation: same
settings, same held-out data, same task definitions. That identity is the *evaluation digest*
(:func:`evaluation_digest`), stored on every registered version. When the champion's stored digest
matches, its stored numbers are used; otherwise the champion's model is fetched and evaluated here,
in the same run, on the same data and config. Metrics of the stages upstream (the quantize stage's
``perplexity_delta_pct``, continual pretraining's ``forgetting`` ...) arrive as ``upstream`` and are
named ``<stage>_<metric>``, so a guard can bound them.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.common import lineage
from components.common.config import LifecycleConfig, versioned_dict
from components.common.errors import DataError
from components.common.log import get_logger
from components.common.shards import read_manifest
from components.common.tokenizer import load_tokenizer
from components.evaluate import gate, harness, stability
from components.evaluate.preferences import heldout_pairs, preference_accuracy
from components.evaluate.tasks import TASKS_DIR
from components.training.eval_checkpoints import COMPLETE, FOLDER
from components.training.heldout import heldout_stats

log = get_logger("lmforge.evaluate")


def load_model(model_dir: Path):
    """The model to evaluate (plain or torchao-quantized), in eval mode on the best available device."""
    import torch

    from components.common.model_loading import load_model as load_any_model

    return load_any_model(model_dir, device="cuda" if torch.cuda.is_available() else "cpu")


def metric_name(key: str) -> str:
    """A name MLflow accepts (alphanumerics, ``_ - . /`` and space), flattened: ``task/acc`` → ``task_acc``."""
    return re.sub(r"[^0-9A-Za-z_\-. ]", "_", key.replace("/", "_"))


def check_same_vocabulary(tokenizer, dataset_dir: Path) -> None:
    """Perplexity is meaningless if the shards were tokenized with another vocabulary."""
    data_vocab = load_tokenizer(dataset_dir / "tokenizer").get_vocab()
    if data_vocab != tokenizer.get_vocab():
        raise DataError(
            f"{dataset_dir}: its tokens were made with a tokenizer whose vocabulary ({len(data_vocab)} entries) "
            f"differs from the model's ({len(tokenizer)}); evaluate on a dataset curated with the model's tokenizer"
        )


def heldout_perplexities(
    cfg: LifecycleConfig, model, tokenizer, datasets: dict[str, Path]
) -> dict[str, dict[str, float]]:
    """Dataset name → {loss, loss_stderr, perplexity, perplexity_stderr, documents, split_tokens} on its
    ``heldout`` split (its first ``evaluate.heldout_max_tokens`` tokens)."""
    out: dict[str, dict[str, float]] = {}
    for name, root in datasets.items():
        root = Path(root)
        heldout = read_manifest(root).get("splits", {}).get("heldout", {})
        if not heldout.get("tokens"):
            raise DataError(
                f"{root}: dataset {name!r} has no held-out tokens; curate it with curate.heldout_fraction > 0"
            )
        check_same_vocabulary(tokenizer, root)
        stats = heldout_stats(
            model,
            root,
            eos_token_id=tokenizer.eos_token_id,
            seq_len=cfg.model.seq_len,
            max_tokens=cfg.evaluate.heldout_max_tokens,
            batch_size=cfg.evaluate.batch_size,
        )
        out[name] = {
            "loss": stats.loss,
            "loss_stderr": stats.stderr,
            "perplexity": stats.perplexity,
            "perplexity_stderr": stats.perplexity_stderr,
            "documents": stats.documents,
            "split_tokens": heldout["tokens"],
        }
        log.info(
            "held-out %s: loss %.4f, perplexity %.2f ± %.2f (%d documents)",
            name,
            stats.loss,
            stats.perplexity,
            stats.perplexity_stderr,
            stats.documents,
        )
    return out


def markdown_table(metrics: dict[str, float]) -> str:
    rows = ["| metric | value |", "| --- | --- |"]
    rows += [f"| {k} | {v:.6g} |" for k, v in metrics.items()]
    return "\n".join(rows) + "\n"


def evaluation_digest(cfg: LifecycleConfig, datasets: dict[str, Path], pairs: list | None = None) -> str:
    """What makes two evaluations' numbers comparable: settings, held-out data, task definitions.

    The gate's own rules are left out (changing a tolerance does not change a measurement), and so is
    the batch size (it does not change a number either).
    """
    settings = versioned_dict(cfg.evaluate)
    settings.pop("gate", None)
    h = hashlib.sha256()
    h.update(json.dumps({"evaluate": settings, "seq_len": cfg.model.seq_len}, sort_keys=True).encode())
    for name, root in datasets.items():
        h.update(name.encode())
        h.update((Path(root) / "manifest.json").read_bytes())  # lists every shard's sha256
    for pair in pairs or []:  # the scored preference pairs, by content
        h.update(pair.identity.encode())
    for f in sorted(TASKS_DIR.rglob("*")):
        if f.is_file() and f.suffix in (".yaml", ".jsonl", ".py") and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(TASKS_DIR)).encode())
            h.update(f.read_bytes())
    for task in cfg.evaluate.tasks:  # a standard lm-eval task: its definition in the installed lm-eval
        if not (TASKS_DIR / f"{task}.yaml").is_file():
            h.update(task_files_digest(task)[0].encode())
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class Champion:
    """The champion as the gate needs it: stored numbers, their digest, and how to get its model."""

    version: str
    metrics: dict[str, float]
    eval_digest: str
    fetch_model: Callable[[], Path]


def find_champion(cfg: LifecycleConfig, store) -> Champion | None:
    """The registry's champion, its model fetched from the store only if it must be re-evaluated."""
    from components.common.artifacts import fetch
    from components.common.registry import champion_record

    record = champion_record(cfg)
    if record is None:
        return None
    # A version's source is '<output uri>/model'; the output (with its completion marker) is the parent.
    output_uri, _, inner = record.source.rstrip("/").rpartition("/")

    def fetch_model() -> Path:
        return fetch(cfg, store, output_uri) / inner

    return Champion(record.version, record.metrics, record.eval_digest, fetch_model)


def upstream_metrics(store, pointers: dict[str, dict]) -> dict[str, float]:
    """``<stage>_<metric>`` for the numbers in the completion markers of the given outputs."""
    from components.common.artifacts import read_marker

    out = {}
    for stage, pointer in pointers.items():
        for key, value in read_marker(store, pointer["uri"]).get("metrics", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[metric_name(f"{stage}_{key}")] = float(value)
    return out


def measure(
    cfg: LifecycleConfig, model_dir: Path, datasets: dict[str, Path], pairs: list | None = None
) -> dict[str, Any]:
    """Load one model and measure it: ``{"metrics", "heldout", "tasks", "directions"}``."""
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    ppl = heldout_perplexities(cfg, model, tokenizer, datasets)
    task_metrics, tasks = harness.run_tasks(
        model,
        tokenizer,
        list(cfg.evaluate.tasks),
        limit=cfg.evaluate.limit,
        batch_size=cfg.evaluate.batch_size,
        seed=cfg.run.seed,
        blank_tasks=list(cfg.evaluate.blank_tasks),
    )
    first = ppl[next(iter(datasets))]
    metrics = {"heldout_perplexity": first["perplexity"], "heldout_perplexity_stderr": first["perplexity_stderr"]}
    for name, v in ppl.items():
        metrics[metric_name(f"perplexity_{name}")] = v["perplexity"]
        metrics[metric_name(f"perplexity_{name}_stderr")] = v["perplexity_stderr"]
    metrics.update({metric_name(k): v for k, v in task_metrics.items()})
    directions = task_directions(tasks)
    if pairs:
        pref = preference_accuracy(model, tokenizer, pairs, max_len=cfg.model.seq_len)
        metrics["preference_acc"], metrics["preference_acc_stderr"] = pref["acc"], pref["acc_stderr"]
        directions["preference_acc"] = True
        log.info("preference accuracy %.3f ± %.3f on %d held-out pairs", pref["acc"], pref["acc_stderr"], pref["pairs"])
    return {"metrics": metrics, "heldout": ppl, "tasks": tasks, "directions": directions}


def task_directions(tasks: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """Flat task metric name → higher is better, from lm-eval's ``higher_is_better`` per task."""
    out = {}
    for task, row in tasks.items():
        better = row.get("higher_is_better") or {}
        for name in row["metrics"]:
            if name.endswith("_stderr"):
                continue
            # a filtered metric is '<metric>_<filter>' (exact_match_strict-match): the longest known base wins
            bases = [b for b in better if name == b or name.startswith(b + "_")]
            if bases:
                out[metric_name(f"{task}_{name}")] = bool(better[max(bases, key=len)])
    return out


def expected_metrics(cfg: LifecycleConfig, datasets: dict[str, Path], upstream: dict[str, float]) -> set[str]:
    """The metric names this evaluation will produce that are known before any model is loaded."""
    names = {"heldout_perplexity", "heldout_perplexity_stderr", *upstream}
    if cfg.evaluate.preference_source:
        names |= {"preference_acc", "preference_acc_stderr"}
    for name in datasets:
        names |= {metric_name(f"perplexity_{name}"), metric_name(f"perplexity_{name}_stderr")}
    return names


def scored_tasks(cfg: LifecycleConfig) -> list[str]:
    """``evaluate.tasks`` and then the ``evaluate.blank_tasks`` not among them (scored by blank perplexity only)."""
    tasks = list(cfg.evaluate.tasks)
    return tasks + [t for t in cfg.evaluate.blank_tasks if t not in tasks]


def task_files_digest(task: str) -> tuple[str, str]:
    """(sha256 over a task's definition and data files, where it is defined) for lineage.

    A shipped task: its YAML and the data files it names. A standard lm-eval task: lm-eval's version
    and the YAMLs of the folder that defines it (its data is the hub dataset those YAMLs name).
    """
    from components.evaluate.tasks.datafiles import task_data_files

    yaml_path = TASKS_DIR / f"{task}.yaml"
    if yaml_path.is_file():
        h = hashlib.sha256(yaml_path.read_bytes())
        for name in task_data_files(task):
            h.update(Path(name).read_bytes())
        return "sha256:" + h.hexdigest(), str(yaml_path)
    import lm_eval

    folders = harness.standard_task_folders(task)
    h = hashlib.sha256(f"lm_eval {lm_eval.__version__} {task}".encode())
    for folder in folders:
        for f in sorted(folder.rglob("*.yaml")):
            h.update(str(f.relative_to(folder.parent)).encode())
            h.update(f.read_bytes())
    return "sha256:" + h.hexdigest(), ", ".join(str(f) for f in folders)


def log_evaluation_inputs(cfg: LifecycleConfig, pairs: list | None) -> None:
    """Each task definition (with its data) and the scored preference pairs as MLflow inputs with digests.

    They enter from outside the platform (shipped files, a preference data set), so they are raw inputs:
    the lineage walker lists them as the files an evaluation read rather than looking for a run that
    produced them."""
    import mlflow

    if mlflow.active_run() is None:
        return  # a library call outside a stage run (tests): nothing to attach the inputs to
    for task in scored_tasks(cfg):
        digest, source = task_files_digest(task)
        lineage.log_input(name=f"eval_tasks/{task}", digest=digest, source_uri=source, context=lineage.RAW_CONTEXT)
    if pairs:
        h = hashlib.sha256("".join(p.identity for p in pairs).encode())
        lineage.log_input(
            name="eval_preferences/heldout",
            digest="sha256:" + h.hexdigest(),
            source_uri=cfg.evaluate.preference_source,
            context=lineage.RAW_CONTEXT,
        )


def evaluate(
    cfg: LifecycleConfig,
    *,
    model_dir: Path,
    datasets: dict[str, Path],
    out_dir: Path,
    upstream: dict[str, float] | None = None,
    champion: Champion | None = None,
    checkpoints: dict[int, Path] | None = None,
) -> dict[str, Any]:
    """Evaluate the model in ``model_dir``, judge it against ``champion``; writes the results into ``out_dir``.

    Args:
        cfg: the run's config (``evaluate`` and ``model.seq_len`` are used).
        model_dir: an HF model directory with its tokenizer.
        datasets: name → curated dataset directory with a ``heldout`` split; the first is the headline.
        out_dir: where ``results.json``, ``eval_table.md``, ``verdict.json`` and ``verdict.md`` go.
        upstream: numbers of earlier stages, already named ``<stage>_<metric>``, for the gate's guards.
        champion: the current champion (None: there is none, the gate promotes if its bounds hold).
        checkpoints: pretraining step → HF model directory of the checkpoints kept for evaluation
            (:func:`eval_checkpoints_in`); with two or more, each is measured and ranked
            (:mod:`components.evaluate.stability`): ``stability.{json,md,png}`` and ``stability_*`` metrics.

    Returns:
        ``{"metrics": {...}, "tasks": {...}, "verdict": {...}, "eval_digest": "sha256:..."}``; metrics
        hold ``heldout_perplexity``, ``perplexity_<name>``, ``<task>_<metric>``, each with ``_stderr``,
        the upstream numbers and ``gate_promote`` (1 or 0).
    """
    if not datasets:
        raise DataError("evaluate: no held-out dataset given; pass at least the pretraining corpus")
    upstream = {metric_name(k): float(v) for k, v in (upstream or {}).items()}
    # Fail before the slow part on a misspelt task or a gate rule naming a metric nobody produces.
    harness.check_tasks(list(cfg.evaluate.tasks))
    harness.check_blank_tasks(list(cfg.evaluate.blank_tasks), list(cfg.evaluate.tasks))
    gate.check_rules(
        cfg.evaluate.gate,
        expected_metrics(cfg, datasets, upstream),
        prefixes=tuple(metric_name(f"{t}_") for t in scored_tasks(cfg)),
    )
    ec = cfg.evaluate
    pairs = (
        heldout_pairs(ec.preference_source, ec.preference_heldout_fraction, ec.preference_max_pairs)
        if ec.preference_source
        else None
    )
    started = time.time()
    digest = evaluation_digest(cfg, datasets, pairs)

    log_evaluation_inputs(cfg, pairs)
    new = measure(cfg, model_dir, datasets, pairs)
    metrics = {**new["metrics"], **upstream}
    champ_scores = None
    if champion is not None:
        if champion.eval_digest == digest:
            champ_scores = gate.Scores(champion.metrics, version=champion.version, source="stored")
            log.info(
                "gate: champion v%s was evaluated with the same digest: using its stored numbers", champion.version
            )
        else:
            log.info(
                "gate: champion v%s was evaluated differently (%s, now %s): re-evaluating it",
                champion.version,
                champion.eval_digest or "no digest",
                digest,
            )
            again = measure(cfg, champion.fetch_model(), datasets, pairs)
            # Upstream numbers (its quantization delta, its forgetting) are facts of its own pipeline
            # run, not of this evaluation: they stay as stored.
            champ_scores = gate.Scores(
                {**champion.metrics, **again["metrics"]}, version=champion.version, source="re-evaluated"
            )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stable = None
    if checkpoints and len(checkpoints) >= 2:
        stable = checkpoint_stability(cfg, checkpoints, datasets, out_dir)
        metrics.update(stability.flat_metrics(stable))
    verdict = gate.decide(cfg.evaluate.gate, gate.Scores(metrics, directions=new["directions"]), champ_scores)
    metrics["gate_promote"] = int(verdict.promote)
    log.info("gate: %s", verdict.reason)

    results = {
        "metrics": metrics,
        "heldout": new["heldout"],
        "tasks": new["tasks"],
        "directions": new["directions"],
        "eval_digest": digest,
        "verdict": verdict.to_dict(),
        "champion_metrics": champ_scores.metrics if champ_scores else None,
        "model_dir": str(model_dir),
        "limit": cfg.evaluate.limit,
        "seconds": round(time.time() - started, 2),
        "stability": stable,
    }
    table = gate.verdict_markdown(verdict)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    (out_dir / "eval_table.md").write_text(markdown_table(metrics))
    (out_dir / "verdict.json").write_text(json.dumps(verdict.to_dict(), indent=2))
    (out_dir / "verdict.md").write_text(table)
    lineage.log_text(table, "gate/verdict.md")
    lineage.log_text(json.dumps(verdict.to_dict(), indent=2), "gate/verdict.json")
    return {
        "metrics": metrics,
        "tasks": new["tasks"],
        "verdict": verdict.to_dict(),
        "eval_digest": digest,
        "stability": stable,
    }


def eval_checkpoints_in(output_dir: Path | None) -> dict[int, Path]:
    """Step → model directory of the complete evaluation checkpoints in a fetched pretraining output."""
    if output_dir is None:
        return {}
    found = {}
    for marker in Path(output_dir).glob(f"{FOLDER}/step-*/{COMPLETE}"):
        found[int(marker.parent.name.removeprefix("step-"))] = marker.parent / "model"
    return dict(sorted(found.items()))


def checkpoint_stability(
    cfg: LifecycleConfig, checkpoints: dict[int, Path], datasets: dict[str, Path], out_dir: Path
) -> dict[str, Any]:
    """Measure every kept pretraining checkpoint as the release model is measured, then rank them.

    Writes ``stability.json``, ``stability.md`` and ``stability.png`` into ``out_dir``; logs each
    checkpoint's numbers as step-wise MLflow curves ``stability/<metric>`` and the plot and table as
    artifacts of the evaluate run."""
    import mlflow

    by_step, directions = {}, {}
    for step, model_dir in sorted(checkpoints.items()):
        log.info("stability: measuring the step-%d checkpoint", step)
        m = measure(cfg, model_dir, datasets)
        by_step[step], directions = m["metrics"], {**directions, **m["directions"]}
    blank = [metric_name(t) for t in cfg.evaluate.blank_tasks]
    summary = stability.summarize(by_step, directions, blank)
    table, png = stability.markdown(summary), stability.plot(summary)
    (out_dir / "stability.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "stability.md").write_text(table)
    (out_dir / "stability.png").write_bytes(png)
    for name, r in summary["tau_vs_perplexity"].items():
        log.info("stability: Kendall tau of %s vs held-out perplexity: %s", name, r["tau"])
    if (run := mlflow.active_run()) is not None:
        for metric in [stability.REFERENCE, *summary["scores"]]:
            lineage.log_curve(
                run.info.run_id, f"stability/{metric}", [(s, by_step[s][metric]) for s in summary["steps"]]
            )
        lineage.log_text(table, "stability/stability.md")
        mlflow.log_artifact(str(out_dir / "stability.png"), "stability")
    return summary
