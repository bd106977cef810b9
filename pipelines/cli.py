"""The ``lmforge`` command line.

::

    lmforge run lifecycle [--profile tiny] [--set key=value ...] [--home DIR] [-v]  run the DAG locally (kfp.local)
    lmforge run continual [--set continual.source=NEW ...] [--home DIR]             retrain the champion on new data
    lmforge compile [--profile small+cluster] [--set k=v ...] [--check]             write/check pipelines/compiled/*.yaml
    lmforge submit lifecycle --host URL [--profile P] [--set k=v ...]               run on a Kubeflow Pipelines endpoint
    lmforge config [--profile P] [--set k=v ...] [--keys]                           show the resolved config / every key
    lmforge runs [--home DIR]                                                       list past runs (from MLflow)
    lmforge show [RUN] [--home DIR]                                                 one run's summary (label, value, [key])
    lmforge lineage models:/NAME@ALIAS|VERSION|RUN-ID [--json] [--home DIR]         a model's history to the raw files
    lmforge mlflow-ui [--home DIR] [--port 5000]                                    browse runs, lineage and the registry
    lmforge experiment continual [--preset tiny|mini] [--set k=v ...] [--only ARM,...] [--seeds N]  the seeds' continual comparisons

A profile is a size (tiny, small, 1b) or a YAML path, optionally followed by overlays joined with
'+', applied left to right: ``small+cluster`` is the small model with the cluster overlay (S3 store,
MLflow server, KubeRay jobs; pipelines/profiles/cluster.yaml). New behaviour is a config key
(``--set``), never a new flag. Errors that lmforge raises on purpose (a bad key, a missing file)
print one line naming the culprit and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from components.common.config import describe, load_config, resolve_home, to_dict
from components.common.errors import LmforgeError
from pipelines.compile import COMPILE_PROFILE, PIPELINES

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"

# Local runs never reach a hub, and Ray must stay on loopback (it would otherwise advertise the
# machine's public address and fail to reach its own GCS).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def _resolved(args) -> tuple[list[str], object]:
    """Overrides with ``run.home`` made absolute (steps may run in another working directory)."""
    overrides = list(args.set or [])
    cfg = load_config(args.profile, overrides)
    home = Path(args.home).expanduser().resolve() if getattr(args, "home", None) else resolve_home(cfg)
    overrides.append(f"run.home={home}")
    return overrides, load_config(args.profile, overrides)


def cmd_run(args) -> int:
    from components.common.lineage import LOG_DIR_ENV
    from components.common.sources import resolve_source
    from pipelines.console import RunLog, child_command, follow
    from pipelines.console_views import make_view

    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    overrides, cfg = _resolved(args)
    if not cfg.storage.uri:  # an s3:// source is checked by the step, with the store's credentials
        for key in ("curate.source", "continual.source", "align.source"):
            section, field = key.split(".")
            source = getattr(getattr(cfg, section), field)
            if not source.startswith("s3://"):
                resolve_source(source)
    started = time.time()
    home = resolve_home(cfg)
    log_dir = home / "logs" / f"{args.pipeline}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}"
    # The pipeline process announces its steps first (pipelines/local.py), so this one needs no kfp.
    run_log = RunLog([], log_dir, errors_dir=home / "errors")
    view = make_view(sys.stdout, args.verbose, started)
    result_file = log_dir / "result.json"
    env = {**os.environ, LOG_DIR_ENV: str(log_dir), "PYTHONUNBUFFERED": "1"}
    try:
        status = follow(
            child_command(args.pipeline, args.profile, overrides, home, result_file), run_log, view, env=env
        )
    except KeyboardInterrupt:
        view.finish(run_log, time.time())
        run_log.close()
        print(f"\ninterrupted; logs in {log_dir}", file=sys.stderr)
        return 130
    outcome = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if not outcome.get("ok"):
        error = outcome.get("error") or f"the pipeline process exited with status {status}"
        run_log.fail_current(re.sub(r"^step \S+ failed: ", "", error))
        view.finish(run_log, time.time())
        run_log.close()
        failed = [s for s in run_log.steps.values() if s.state == "failed" and s.log_path]
        where = failed[-1].log_path if failed else log_dir / "pipeline.log"
        print(f"\nlmforge: {args.pipeline} failed after {time.time() - started:.0f}s\n  {'log':<18} {where}")
        raise LmforgeError(error)
    view.finish(run_log, time.time())
    run_log.close()
    result = outcome["record"]
    result["wall_seconds"] = round(time.time() - started, 1)
    result["logs"] = str(log_dir)
    print(_summary_text(result))
    return 0


def _summary_text(result: dict) -> str:
    lines = [f"\nlmforge: {result.get('pipeline', 'pipeline')} finished in {result['wall_seconds']:.0f}s"]
    for label, key in (
        ("report", "report"),
        ("model", "model_uri"),
        ("registered", "registered"),
        ("MLflow parent run", "parent_run_id"),
        ("step logs", "logs"),
    ):
        if result.get(key):
            lines.append(f"  {label:<18} {result[key]}")
    if result.get("mlflow_ui"):
        lines.append(f"  {'MLflow UI':<18} {result['mlflow_ui']}")
    return "\n".join(lines)


def cmd_compile(args) -> int:
    from pipelines.compile import check_compiled, compile_all

    if args.check:
        if args.profile != COMPILE_PROFILE or args.set:
            raise LmforgeError(f"--check compares with the committed default ({COMPILE_PROFILE}); drop --profile/--set")
        stale = check_compiled(COMPILED_DIR)
        if stale:
            print(f"error: stale compiled pipelines: {', '.join(stale)}; run `lmforge compile`", file=sys.stderr)
            return 1
        print("compiled pipelines are up to date")
        return 0
    for path in compile_all(Path(args.output_dir), args.profile, list(args.set or [])):
        print(f"wrote {path}")
    return 0


def cmd_submit(args) -> int:
    from pipelines.submit import submit

    print(
        submit(
            args.pipeline,
            host=args.host,
            profile=args.profile,
            overrides=list(args.set or []),
            experiment=args.experiment,
            upload_only=args.upload_only,
            if_new_data=args.if_new_data,
            service_account=args.service_account,
            namespace=args.namespace,
        )
    )
    return 0


def cmd_config(args) -> int:
    if args.keys:
        for key, type_name, default, doc in describe():
            print(f"{key} ({type_name}, default {default!r})\n    {doc}")
        return 0
    cfg = load_config(args.profile, list(args.set or []))
    print(json.dumps(to_dict(cfg), indent=2))
    return 0


def cmd_mlflow_ui(args) -> int:
    import subprocess

    from components.common.lineage import tracking_uri

    cfg = load_config("tiny", [f"run.home={Path(args.home).expanduser().resolve()}"])
    uri = tracking_uri(cfg)
    print(f"MLflow UI on http://127.0.0.1:{args.port} (backend {uri}); Ctrl-C stops it")
    return subprocess.call(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
        ]
    )


def _tracking_client(args):
    """An MlflowClient on the tracking store the profile, ``--set`` and ``--home`` name."""
    import mlflow

    from components.common.lineage import tracking_uri

    _, cfg = _resolved(args)
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise LmforgeError(
            f"no tracking database at {uri.removeprefix('sqlite:///')}: run `lmforge run lifecycle` first, pass "
            "--home of an earlier run, or --set lineage.tracking_uri=http://<mlflow server>"
        )
    return mlflow.MlflowClient(tracking_uri=uri), cfg


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000)) if ms else "-"


def cmd_runs(args) -> int:
    from components.common.runs import list_runs

    client, cfg = _tracking_client(args)
    runs = list_runs(client, cfg.lineage.experiment, limit=args.limit)
    if not runs:
        print(f"no pipeline runs in MLflow experiment {cfg.lineage.experiment!r}")
        return 0
    head = ("run", "pipeline", "profile", "started", "took", "status", "registered", "report")
    rows = [
        (
            r.run_id[:12],
            r.pipeline,
            r.profile,
            _when(r.start_ms),
            _duration(r.seconds),
            r.status,
            r.registered or "-",
            r.report or "-",
        )
        for r in runs
    ]
    widths = [max(len(str(row[i])) for row in (head, *rows)) for i in range(len(head) - 1)]
    for row in (head, *rows):
        print("  ".join(f"{v:<{w}}" for v, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def cmd_show(args) -> int:
    from components.common.lineage import ui_links
    from components.common.runs import find_run
    from components.report.build import STAGE_ORDER, number_text, stage_title
    from components.report.metrics import stage_metric_label

    client, cfg = _tracking_client(args)
    run = find_run(client, cfg.lineage.experiment, args.run or "")
    print(
        f"{run.pipeline or 'pipeline'} run {run.run_id}  {run.status}  started {_when(run.start_ms)}, took {_duration(run.seconds)}"
    )
    fields = {
        "profile": run.profile,
        "KFP run id": run.kfp_run_id,
        "report": run.report,
        "model": run.model,
        "registered": run.registered,
        "step logs": run.logs,
        **ui_links(cfg, experiment_id=run.experiment_id, run_id=run.run_id, kfp_run_id=run.kfp_run_id),
    }
    for label, value in fields.items():
        if value:
            print(f"  {label:<18} {value}")
    order = [s for s in STAGE_ORDER if s in run.metrics] + sorted(set(run.metrics) - set(STAGE_ORDER))
    # The MLflow key follows each number in brackets (dim on a terminal): what `mlflow` queries, the
    # gate's rules and `--set evaluate.gate...` name.
    dim, plain = ("\x1b[2m", "\x1b[0m") if sys.stdout.isatty() and not os.environ.get("NO_COLOR") else ("", "")
    for stage in order:
        print(f"\n{stage_title(stage)}")
        rows = [
            (stage_metric_label(stage, key), number_text(value), key)
            for key, value in sorted(run.metrics[stage].items())
        ]
        label_width = max((len(r[0]) for r in rows), default=0)
        value_width = max((len(r[1]) for r in rows), default=0)
        for label, value, key in rows:
            print(f"  {label:<{label_width}}  {value:<{value_width}}  {dim}[{key}]{plain}")
    return 0


def cmd_lineage(args) -> int:
    from components.common.lineage import mlflow_ui_url
    from components.common.lineage_walk import walk

    client, cfg = _tracking_client(args)
    tree = walk(
        client,
        args.ref,
        model_name=cfg.register.model_name,
        ui_url=mlflow_ui_url(cfg),
        kfp_ui_url=cfg.lineage.kfp_ui_url,
    )
    broken = tree.broken_nodes()
    if args.json:
        print(json.dumps({**tree.to_dict(), "broken": [n.name for n in broken]}, indent=2))
    else:
        print(tree.render())
        raw = tree.raw_files()
        print(f"\n{len(tree.corpora())} curated corpora, {len(raw)} raw files", end="")
        print(f"; lineage BROKEN at {len(broken)} place(s)" if broken else "")
    return 1 if broken else 0


def cmd_experiment(args) -> int:
    from pipelines.experiments import PRESETS, run_experiment

    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    preset, seeds = PRESETS[args.preset] if args.preset else ([], 1)
    args.set = [*preset, *(args.set or [])]  # --set goes on top of the preset
    overrides, cfg = _resolved(args)
    only = [a.strip() for a in args.only.split(",") if a.strip()] if args.only else None
    name = "continual" if args.preset in (None, "tiny") else f"continual-{args.preset}"
    started = time.time()
    run_experiment(
        args.profile, overrides, resolve_home(cfg), only, seeds=seeds if args.seeds is None else args.seeds, name=name
    )
    out = resolve_home(cfg) / "experiments" / name
    print((out / "table.md").read_text())
    print(f"lmforge: experiment finished in {time.time() - started:.0f}s; table, results and plots in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def config_args(p, home: bool = True, profile: str | None = "tiny", profile_help: str = ""):
        p.add_argument(
            "--profile",
            default=profile,
            help=profile_help
            or f"profile: a size (tiny, small, 1b) or a YAML path, with overlays joined by '+' applied left to "
            f"right, e.g. small+cluster (default {profile})",
        )
        p.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a config key (repeatable); see `lmforge config --keys`",
        )
        if home:
            p.add_argument(
                "--home", help="local working directory for store, MLflow DB and KFP outputs (default .lmforge)"
            )

    p = sub.add_parser(
        "run",
        help="run a pipeline locally through kfp.local (no cluster needed)",
        description="Run a pipeline locally. The console shows one line per step (live on a terminal, plain "
        "lines on a pipe); every step's full log goes to <home>/logs/<pipeline>-<time>/<step>.log.",
    )
    p.add_argument("pipeline", choices=sorted(PIPELINES), help="pipeline to run")
    p.add_argument("--verbose", "-v", action="store_true", help="stream every step's full log to the console")
    config_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", help="compile the pipelines to KFP IR YAML")
    p.add_argument(
        "--output-dir", default=str(COMPILED_DIR), help="where to write the YAML (default pipelines/compiled)"
    )
    p.add_argument("--check", action="store_true", help="fail if the committed YAML differs from a fresh compile")
    config_args(
        p,
        home=False,
        profile=COMPILE_PROFILE,
        profile_help="profile the pipelines are compiled for: it places every step (image, GPUs, memory, "
        "retries) and becomes the default of their `profile` parameter; it must run on a cluster "
        f"(S3 store, MLflow server), e.g. 1b+cluster (default {COMPILE_PROFILE})",
    )
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("submit", help="upload and run a compiled pipeline on a Kubeflow Pipelines endpoint")
    p.add_argument("pipeline", choices=sorted(PIPELINES), help="pipeline to submit")
    p.add_argument("--host", default=os.environ.get("KFP_HOST", ""), help="KFP API endpoint (default $KFP_HOST)")
    p.add_argument("--experiment", default="lmforge", help="KFP experiment to run in")
    p.add_argument(
        "--namespace",
        default=os.environ.get("KFP_NAMESPACE", ""),
        help="Kubeflow profile namespace of the run and its experiment in multi-user KFP (default $KFP_NAMESPACE)",
    )
    p.add_argument(
        "--upload-only",
        action="store_true",
        help="register the pipeline as a version named by the package's content hash (no-op when it exists)",
    )
    p.add_argument(
        "--service-account",
        default=os.environ.get("LMFORGE_SERVICE_ACCOUNT", ""),
        help="Kubernetes service account the run's pods use (default $LMFORGE_SERVICE_ACCOUNT, else KFP's default)",
    )
    p.add_argument(
        "--if-new-data",
        metavar="URI",
        help="submit only if the objects under URI are complete and differ from what the last successful run "
        "learned, and no run of this pipeline and model is active",
    )
    config_args(
        p,
        home=False,
        profile=None,
        profile_help="profile of the run (default: the one the pipeline was compiled with); it must run on a "
        "cluster, e.g. small+cluster or 1b+cluster",
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "config",
        help="print the resolved configuration, or every key with its documentation",
        description="Print the configuration a profile and overrides resolve to, or every key (--keys). "
        "A profile string is one profile or several joined by '+', applied left to right, key by key: a size "
        "(tiny, small, 1b; pipelines/profiles/<name>.yaml) or a YAML path, then overlays such as cluster "
        "(S3 store, MLflow server, KubeRay jobs): `lmforge config --profile 1b+cluster`. --set overrides apply "
        "last.",
    )
    p.add_argument("--keys", action="store_true", help="list every key with type, default and meaning")
    config_args(p, home=False)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser(
        "runs",
        help="list past pipeline runs from MLflow (pipeline, profile, start, duration, status, registered, report)",
        description="List pipeline runs, newest first, from MLflow's parent runs: the local tracking database "
        "under --home, or a tracking server (--set lineage.tracking_uri=http://…).",
    )
    p.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")
    config_args(p)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser(
        "show",
        help="print one run's summary: where its report, model and logs are, and every stage's numbers",
        description="Print a pipeline run's summary from MLflow: the numbers of the report's summary, by stage, "
        "each under a readable name followed by its MLflow metric key in brackets, e.g. "
        "'perplexity after  40.1  [perplexity_after]' under Quantization (the parent run holds it as "
        "quantize.perplexity_after; gate rules and MLflow searches use these keys). Colour: the key is dim on "
        "a terminal unless NO_COLOR is set.",
    )
    p.add_argument("run", nargs="?", help="MLflow run id (or a unique prefix) or KFP run id; default the newest")
    config_args(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "lineage",
        help="print a model's history back to the raw files, through MLflow alone",
        description="Walk from a registered model version (models:/NAME@ALIAS, models:/NAME/VERSION, or a version "
        "number of register.model_name) or an MLflow run id back through every step run to the raw files, "
        "with their digests. Exits 1 when the lineage is broken (a run deleted).",
    )
    p.add_argument("ref", help="models:/NAME@ALIAS, models:/NAME/VERSION, a version number, or a run id")
    p.add_argument("--json", action="store_true", help="print the tree as JSON")
    config_args(p)
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser(
        "experiment",
        help="run the seeds' continual-pretraining comparisons (re-warming, replay, WSD, averaging, subsets)",
    )
    from pipelines.experiments import PRESETS as EXPERIMENT_PRESETS

    p.add_argument("name", choices=["continual"], help="which experiment")
    p.add_argument(
        "--preset",
        choices=sorted(EXPERIMENT_PRESETS),
        help="a sized set-up (pipelines/experiments.py: PRESETS), its overrides under --set: tiny = the profile as "
        "it is, 2 seeds; mini = the mini model, 1 seed, each configuration within 5 minutes on 2 cores "
        "(table in <home>/experiments/continual-mini/)",
    )
    p.add_argument("--only", help="comma-separated arms to run (default all; see pipelines/experiments.py)")
    p.add_argument(
        "--seeds",
        type=int,
        help="run every arm with this many seeds (run.seed, run.seed+1, ...): the spread decides 'within noise' "
        "(default: the preset's, else 1)",
    )
    config_args(p)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("mlflow-ui", help="start the MLflow UI on this run's tracking database (127.0.0.1)")
    p.add_argument("--home", default=".lmforge", help="the run's local working directory")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_mlflow_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LmforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
