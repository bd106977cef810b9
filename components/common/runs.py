"""Past pipeline runs, as MLflow's parent runs record them: what ``lmforge runs`` and ``lmforge show`` print.

Everything comes from the tracking store (the local SQLite file or a tracking server), never from
the local run home, so the same commands answer for a laptop and for a cluster. A parent run is
tagged by ``start_lineage`` (pipeline, profile, KFP run id, log directory) and by ``report`` (report
URI, model URI, the registered version), and holds every stage's metrics as ``<stage>.<metric>``:
the numbers the report's summary shows. A run that failed before ``report`` has no such metrics;
its stage runs' own metrics are shown instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.common.errors import LmforgeError
from components.common.lineage import TAG_KFP_RUN, TAG_LOGS, TAG_PIPELINE, TAG_PROFILE, TAG_STAGE


@dataclass
class RunInfo:
    """One pipeline run: what ``lmforge runs`` lists, plus its metrics by stage for ``lmforge show``."""

    run_id: str
    experiment_id: str
    pipeline: str
    profile: str
    start_ms: int
    end_ms: int | None
    status: str
    registered: str = ""
    report: str = ""
    model: str = ""
    kfp_run_id: str = ""
    logs: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def seconds(self) -> float | None:
        return (self.end_ms - self.start_ms) / 1000 if self.end_ms else None


def _info(run) -> RunInfo:
    tags = run.data.tags
    return RunInfo(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        pipeline=tags.get(TAG_PIPELINE, ""),
        profile=tags.get(TAG_PROFILE, ""),
        start_ms=run.info.start_time or 0,
        end_ms=run.info.end_time,
        status=run.info.status,
        registered=tags.get("lmforge.registered", ""),
        report=tags.get("lmforge.report_uri", "").removeprefix("file://"),
        model=tags.get("lmforge.model_uri", ""),
        kfp_run_id=tags.get(TAG_KFP_RUN, ""),
        logs=tags.get(TAG_LOGS, ""),
    )


def list_runs(client, experiment: str, limit: int = 50) -> list[RunInfo]:
    """The newest ``limit`` pipeline runs (parent runs) of MLflow experiment ``experiment``, newest first."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TAG_PIPELINE}` LIKE '%'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    return [_info(r) for r in runs]


def find_run(client, experiment: str, ref: str = "") -> RunInfo:
    """The pipeline run ``ref`` names (its MLflow run id or a unique prefix, or its KFP run id; '' = the
    newest), with its metrics by stage."""
    runs = list_runs(client, experiment, limit=1000)
    if not runs:
        raise LmforgeError(f"no pipeline runs in MLflow experiment {experiment!r} (run `lmforge run lifecycle` first)")
    if not ref:
        chosen = runs[0]
    else:
        matches = [r for r in runs if r.run_id.startswith(ref) or r.kfp_run_id == ref]
        if len(matches) != 1:
            known = ", ".join(r.run_id[:12] for r in runs[:5])
            what = "matches several runs" if matches else "matches no pipeline run"
            raise LmforgeError(f"{ref!r} {what} in experiment {experiment!r}; recent runs: {known}")
        chosen = matches[0]
    chosen.metrics = _metrics(client, chosen)
    return chosen


def _metrics(client, info: RunInfo) -> dict[str, dict[str, float]]:
    by_stage: dict[str, dict[str, float]] = {}
    for key, value in client.get_run(info.run_id).data.metrics.items():
        stage, _, name = key.partition(".")
        if name:
            by_stage.setdefault(stage, {})[name] = value
    if by_stage:
        return by_stage
    # Failed before the report step logged the summary: each stage run's own numbers.
    children = client.search_runs(
        [info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    for child in children:
        stage = child.data.tags.get(TAG_STAGE, child.info.run_name)
        if stage in by_stage:
            stage = f"{stage}_{sum(s.startswith(stage) for s in by_stage) + 1}"
        by_stage[stage] = dict(child.data.metrics)
    return by_stage
