"""The evaluate stage: held-out perplexity on each curated corpus plus the shipped lm-eval tasks.

One model load, then two kinds of numbers. Perplexity comes from :func:`perplexity.heldout_loss`,
the helper every stage uses for "loss on held-out data", so the evaluate stage's headline number
(``heldout_perplexity``, on the first dataset given: the pretraining corpus) is comparable with what
pretraining, continual pretraining and quantization report. Task scores come from lm-eval through
:mod:`components.evaluate.harness`. Everything lands in ``results.json``; ``eval_table.md`` is the
same numbers as a Markdown table for the KFP UI and the run report.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from components.common.config import LifecycleConfig
from components.common.errors import DataError
from components.common.log import get_logger
from components.common.shards import read_manifest
from components.common.tokenizer import load_tokenizer
from components.evaluate import harness
from components.training.heldout import heldout_loss, perplexity

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
    """Dataset name → {loss, perplexity, split_tokens} on its ``heldout`` split (its first ``evaluate.heldout_max_tokens``)."""
    out: dict[str, dict[str, float]] = {}
    for name, root in datasets.items():
        root = Path(root)
        heldout = read_manifest(root).get("splits", {}).get("heldout", {})
        if not heldout.get("tokens"):
            raise DataError(
                f"{root}: dataset {name!r} has no held-out tokens; curate it with curate.heldout_fraction > 0"
            )
        check_same_vocabulary(tokenizer, root)
        loss = heldout_loss(
            model,
            root,
            seq_len=cfg.model.seq_len,
            max_tokens=cfg.evaluate.heldout_max_tokens,
            batch_size=cfg.evaluate.batch_size,
        )
        out[name] = {
            "loss": loss,
            "perplexity": perplexity(loss),
            "split_tokens": heldout["tokens"],
        }
        log.info("held-out %s: loss %.4f, perplexity %.2f", name, loss, out[name]["perplexity"])
    return out


def markdown_table(metrics: dict[str, float]) -> str:
    rows = ["| metric | value |", "| --- | --- |"]
    rows += [f"| {k} | {v:.6g} |" for k, v in metrics.items()]
    return "\n".join(rows) + "\n"


def evaluate(cfg: LifecycleConfig, *, model_dir: Path, datasets: dict[str, Path], out_dir: Path) -> dict[str, Any]:
    """Evaluate the model in ``model_dir``; writes ``results.json`` and ``eval_table.md`` into ``out_dir``.

    Args:
        cfg: the run's config (``evaluate`` and ``model.seq_len`` are used).
        model_dir: an HF model directory with its tokenizer.
        datasets: name → curated dataset directory with a ``heldout`` split; the first is the headline.
        out_dir: where the results go (created if missing).

    Returns:
        ``{"metrics": {"heldout_perplexity", "perplexity_<name>"..., "<task>_<metric>"...}, "tasks": {...}}``.
    """
    if not datasets:
        raise DataError("evaluate: no held-out dataset given; pass at least the pretraining corpus")
    harness.check_tasks(list(cfg.evaluate.tasks))  # fail before the slow part on a misspelt task
    started = time.time()
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
    )

    metrics = {"heldout_perplexity": ppl[next(iter(datasets))]["perplexity"]}
    metrics.update({metric_name(f"perplexity_{name}"): v["perplexity"] for name, v in ppl.items()})
    metrics.update({metric_name(k): v for k, v in task_metrics.items()})

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "metrics": metrics,
        "heldout": ppl,
        "tasks": tasks,
        "model_dir": str(model_dir),
        "limit": cfg.evaluate.limit,
        "seconds": round(time.time() - started, 2),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    (out_dir / "eval_table.md").write_text(markdown_table(metrics))
    return {"metrics": metrics, "tasks": tasks}
