"""The plumbing every stage shares, so that each ``component.py`` stays a thin wrapper.

:func:`run_stage` does, in order: build the config from profile + overrides, compute the output's
content address, reuse a completed output (the skip), else fetch the inputs from the object store,
open the stage's nested MLflow run, log the inputs, call the stage's library function, log its
metrics, upload the output and mark it complete. It knows nothing of KFP: the component passes plain
paths of its input pointers and receives the output pointer to write.

Stage library functions return a summary dict; its ``"metrics"`` entry (name → number) goes to MLflow
and to the KFP ``Metrics`` artifact, everything else goes into the completion marker.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.common import lineage
from components.common.artifacts import (
    Output,
    fetch,
    is_complete,
    open_run_store,
    plan_output,
    publish,
    read_marker,
    read_pointer,
    store_root,
)
from components.common.config import LifecycleConfig, load_config, resolve_home, versioned_dict
from components.common.errors import LmforgeError
from components.common.log import get_logger
from components.common.storage import ObjectStore, join

log = get_logger("lmforge.stage")


@dataclass(frozen=True)
class StageContext:
    """What a stage's library function gets besides its config section."""

    cfg: LifecycleConfig
    inputs: dict[str, Path]
    input_pointers: dict[str, dict]
    out: Output
    store: ObjectStore
    mlflow_run_id: str

    @property
    def out_dir(self) -> Path:
        return self.out.local

    def input_uri(self, name: str, *parts: str) -> str:
        """The store URI of input ``name`` (and a path inside it), for code that reads from the store itself."""
        return join(self.input_pointers[name]["uri"], *parts)

    def scratch_uri(self, kind: str) -> str:
        """A store location tied to this output, for state written *during* the stage (checkpoints)."""
        return join(store_root(self.cfg), kind, self.out.digest)


def run_stage(
    stage: str,
    kind: str,
    *,
    profile: str,
    overrides: list[str],
    parent_run_id: str,
    input_pointer_paths: dict[str, str],
    fn: Callable[[StageContext], dict[str, Any]],
    sections: tuple[str, ...],
    extra: dict | None = None,
    fetch_inputs: bool = True,
) -> tuple[dict, dict]:
    """Run ``fn`` as stage ``stage`` unless an identical output is already complete.

    Args:
        stage: stage name, also the MLflow run name.
        kind: the store folder the output goes to (``datasets``, ``models``, ``reports``...).
        profile, overrides: the run's configuration source.
        parent_run_id: the pipeline's MLflow parent run ('' for a top-level run).
        input_pointer_paths: input name → path of the KFP artifact holding its pointer JSON.
        fn: the stage body.
        sections: what of the config changes this stage's output: a section name (its versioned
            fields) or a dotted key (``"evaluate.heldout_max_tokens"``: that one field), see
            :func:`hashed_config`.
        extra: anything else that changes the output (e.g. which corpus a curate step reads).
        fetch_inputs: make local copies of the inputs (off for stages that only read pointers).

    Returns:
        (output pointer, summary).
    """
    cfg = load_config(profile, overrides)
    store = open_run_store(cfg)
    pointers = {name: read_pointer(path) for name, path in input_pointer_paths.items()}
    hashed = hashed_config(cfg, sections)
    if extra:
        hashed["extra"] = extra
    out = plan_output(cfg, kind, stage, hashed, {n: p["digest"] for n, p in pointers.items()})

    with lineage.stage_run(cfg, stage, parent_run_id) as run_id:
        import mlflow

        for name, p in pointers.items():
            lineage.log_input(name=f"{p['kind']}/{name}", digest=p["digest"], source_uri=p["uri"])
        mlflow.set_tag("lmforge.output_uri", out.uri)
        if is_complete(store, out):
            summary = read_marker(store, out.uri)
            log.info("%s: reusing completed output %s (same config and inputs)", stage, out.uri)
            mlflow.set_tag("lmforge.skipped", "true")
        else:
            started = time.time()
            local_inputs = {name: fetch(cfg, store, p["uri"]) for name, p in pointers.items()} if fetch_inputs else {}
            out.local.mkdir(parents=True, exist_ok=True)
            ctx = StageContext(cfg, local_inputs, pointers, out, store, run_id)
            try:
                summary = fn(ctx)
            except Exception as e:
                _record_failure(cfg, stage, e)
                if parent_run_id:
                    # Only the last step closes the pipeline's run; a failed one would stay RUNNING. A KFP
                    # retry that then succeeds ends it FINISHED after all (report closes it).
                    lineage.finish_pipeline_run(cfg, parent_run_id, status="FAILED")
                raise
            summary.setdefault("metrics", {})["stage_seconds"] = round(time.time() - started, 3)
            (out.local / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
            publish(store, out, summary)
            log.info("%s: wrote %s in %.1fs", stage, out.uri, time.time() - started)
        metrics = {k: float(v) for k, v in summary.get("metrics", {}).items() if isinstance(v, (int, float))}
        if metrics:
            mlflow.log_metrics(metrics)
    return out.pointer(), summary


def hashed_config(cfg: LifecycleConfig, sections: tuple[str, ...]) -> dict[str, Any]:
    """The part of ``cfg`` a stage's content address covers: each of ``sections`` plus the run's seed.

    A section name stands for all its versioned fields; a dotted key for one field, so a stage that
    reads a single knob of another section (quantize measures perplexity with
    ``evaluate.heldout_max_tokens``) is not re-run when the rest of that section changes (a gate rule).
    """
    hashed: dict[str, Any] = {}
    for key in sections:
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        hashed[key] = versioned_dict(value) if dataclasses.is_dataclass(value) else value
    hashed["seed"] = cfg.run.seed
    return hashed


def _record_failure(cfg: LifecycleConfig, stage: str, error: Exception) -> None:
    """Leave the one-line reason where a local runner can show it instead of a traceback."""
    errors = resolve_home(cfg) / "errors"
    errors.mkdir(parents=True, exist_ok=True)
    text = str(error) if isinstance(error, LmforgeError) else f"{type(error).__name__}: {error}"
    (errors / f"{stage}-{int(time.time() * 1000)}.txt").write_text(text)


def numeric_metrics(summary: dict) -> dict[str, float]:
    """The numbers of a summary, for a KFP ``Metrics`` artifact."""
    return {k: float(v) for k, v in summary.get("metrics", {}).items() if isinstance(v, (int, float))}


def export(artifact, pointer: dict, metrics_artifact=None, summary: dict | None = None) -> None:
    """Write ``pointer`` into a KFP output artifact and the summary's numbers into a Metrics artifact.

    Takes the KFP artifact objects duck-typed (``.path``, ``.metadata``, ``.log_metric``) so this module
    stays free of ``kfp`` imports.
    """
    from components.common.artifacts import write_pointer

    write_pointer(artifact.path, pointer)
    artifact.metadata.update(pointer)
    if metrics_artifact is not None and summary is not None:
        for name, value in numeric_metrics(summary).items():
            metrics_artifact.log_metric(name, value)


def metrics_markdown(summary: dict, title: str) -> str:
    """A stage summary's numbers as a Markdown table (KFP renders Markdown artifacts)."""
    rows = "".join(f"| {k} | {v:.6g} |\n" for k, v in sorted(numeric_metrics(summary).items()))
    return f"## {title}\n\n| metric | value |\n|---|---|\n{rows}"
