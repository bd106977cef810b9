"""Gather the stage summaries of one run, build the report, store it and log it to MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path

from components.common import lineage
from components.common.artifacts import open_run_store, read_marker, read_pointer, store_root
from components.common.config import LifecycleConfig, resolve_home
from components.common.log import get_logger
from components.common.storage import join
from components.report.build import build_report

log = get_logger("lmforge.report")

#: Where the evaluate stage writes its stability plot when its summary names none.
STABILITY_PLOT = "stability.png"


def write_report(
    cfg: LifecycleConfig, pointer_paths: dict[str, str], parent_run_id: str, kfp_run_id: str
) -> tuple[str, str]:
    """Build the report from each stage's completion marker; returns (html, markdown).

    The report goes to ``<store>/reports/run-<kfp run id>/`` and to the MLflow parent run, whose status
    is then set to FINISHED (this is the pipeline's last step).
    """
    store = open_run_store(cfg)
    pointers = {stage: read_pointer(path) for stage, path in pointer_paths.items()}
    summaries = {stage: read_marker(store, p["uri"]) for stage, p in pointers.items()}
    fetch_stability_plot(store, summaries, pointers)
    model_uri = pointers["quantize"]["uri"] + "/model" if "quantize" in pointers else ""
    reg = summaries.get("register", {})
    context = {
        "profile": cfg.run.profile,
        "KFP run id": kfp_run_id,
        "MLflow tracking URI": lineage.tracking_uri(cfg),
        "MLflow parent run": parent_run_id,
        "model": model_uri,
        "registered": f"{reg.get('model_name', '')} v{int(reg.get('metrics', {}).get('version', 0))}" if reg else "",
    }
    pipeline = "lifecycle"
    if parent_run_id:
        import mlflow

        lineage.setup(cfg)
        parent = mlflow.MlflowClient().get_run(parent_run_id)
        pipeline = parent.data.tags.get(lineage.TAG_PIPELINE, pipeline)
        # On a cluster: the run's pages in the MLflow and Kubeflow UIs (lineage.ui_url, lineage.kfp_ui_url).
        context.update(
            lineage.ui_links(cfg, experiment_id=parent.info.experiment_id, run_id=parent_run_id, kfp_run_id=kfp_run_id)
        )
    context["pipeline"] = pipeline
    page, markdown, images = build_report(summaries, context, {stage: p["uri"] for stage, p in pointers.items()})
    report_uri = join(store_root(cfg), "reports", f"run-{kfp_run_id}")
    with tempfile.TemporaryDirectory(dir=resolve_home(cfg)) as tmp:
        tmp = Path(tmp)
        (tmp / "report.html").write_text(page, encoding="utf-8")
        (tmp / "report.md").write_text(markdown, encoding="utf-8")
        for name, png in images.items():
            (tmp / name).write_bytes(png)
        store.upload_dir(tmp, report_uri)
        if parent_run_id:  # MLflow was set up above, when the pipeline name was read
            client = mlflow.MlflowClient()
            client.log_artifacts(parent_run_id, str(tmp), artifact_path="report")
            client.set_tag(parent_run_id, "lmforge.report_uri", join(report_uri, "report.html"))
            client.set_tag(parent_run_id, "lmforge.model_uri", model_uri)
            if reg:  # what `lmforge runs` lists, without opening the run's register step
                client.set_tag(parent_run_id, "lmforge.registered", f"{context['registered']} ({reg.get('alias', '')})")
            for stage, summary in summaries.items():
                for k, v in summary.get("metrics", {}).items():
                    if isinstance(v, (int, float)):
                        client.log_metric(parent_run_id, f"{stage}.{k}", float(v))
            lineage.finish_pipeline_run(cfg, parent_run_id)
    _record_run(
        cfg, kfp_run_id, {**context, "report_uri": join(report_uri, "report.html"), "parent_run_id": parent_run_id}
    )
    return page, markdown


def fetch_stability_plot(store, summaries: dict[str, dict], pointers: dict[str, dict]) -> None:
    """Put the stability plot (the file ``stability.plot`` names in the evaluate output, default
    ``stability.png``) into the summary as ``plot_png``, so the page embeds it (docs/report.md)."""
    stability = (summaries.get("evaluate") or {}).get("stability")
    if not isinstance(stability, dict) or "evaluate" not in pointers:
        return
    uri = join(pointers["evaluate"]["uri"], stability.get("plot") or STABILITY_PLOT)
    if store.exists(uri):
        stability["plot_png"] = store.read_bytes(uri)
    else:  # the table still shows; say why the plot does not
        log.warning("report: the evaluate summary names stability plot %s, which is not in the store", uri)


def _record_run(cfg: LifecycleConfig, kfp_run_id: str, context: dict) -> None:
    """Leave a small record under ``run.home/runs`` so a local CLI can print where everything is."""
    import json

    runs = resolve_home(cfg) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    report = context["report_uri"]
    record = {
        "pipeline": context.get("pipeline", "lifecycle"),
        "kfp_run_id": kfp_run_id,
        "report": report.removeprefix("file://"),
        "model_uri": context.get("model", ""),
        "registered": context.get("registered", ""),
        "parent_run_id": context.get("parent_run_id", ""),
        "mlflow_ui": f"lmforge mlflow-ui --home {resolve_home(cfg)}",
    }
    (runs / f"{kfp_run_id}.json").write_text(json.dumps(record, indent=2))
