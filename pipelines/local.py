"""Run a pipeline on this machine through ``kfp.local``: every step a subprocess, no cluster.

``SubprocessRunner(use_venv=False)`` runs each component in the current interpreter, where lmforge
is installed, so a local run exercises exactly the component code the cluster runs in the image.
When a step fails, the one-line reason it recorded (see ``components.common.stage``) is raised as an
:class:`LmforgeError` instead of KFP's "inner task failed".

``python -m pipelines.local PIPELINE --profile P --home DIR [--set k=v …] --result FILE`` is the
process ``lmforge run`` starts and follows (pipelines/console.py): it runs the pipeline and writes
``{"ok": true, "record": …}`` or ``{"ok": false, "error": "<one line>"}`` to FILE.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from components.common.errors import LmforgeError


def run_local(pipeline_fn, profile: str, overrides: list[str], home: Path) -> dict:
    """Run ``pipeline_fn`` with kfp.local; returns what the report step recorded about the run."""
    from kfp import local

    home.mkdir(parents=True, exist_ok=True)
    started = time.time()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(home / "kfp"), raise_on_error=True)
    try:
        pipeline_fn(profile=profile, overrides=overrides)
    except RuntimeError as e:
        raise LmforgeError(_failure_reason(home, started) or str(e)) from e
    runs = sorted((home / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not runs or runs[-1].stat().st_mtime < started:
        raise LmforgeError(f"the pipeline finished but wrote no run record under {home / 'runs'}")
    return json.loads(runs[-1].read_text())


def _failure_reason(home: Path, since: float) -> str:
    errors = [p for p in (home / "errors").glob("*.txt") if p.stat().st_mtime >= since]
    if not errors:
        return ""
    newest = max(errors, key=lambda p: p.stat().st_mtime)
    return f"step {newest.stem.rsplit('-', 1)[0]} failed: {newest.read_text().strip()}"


def main(argv: list[str] | None = None) -> int:
    from components.common.config import load_config
    from pipelines.compile import build_pipeline
    from pipelines.console import announce_plan

    parser = argparse.ArgumentParser(prog="python -m pipelines.local", description=__doc__)
    parser.add_argument("pipeline")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--result", required=True, help="where to write the outcome as JSON")
    args = parser.parse_args(argv)
    result = Path(args.result)
    try:
        cfg = load_config(args.profile, args.set)
        # The local graph is placed from the run's own config: kfp.local ignores images and resources,
        # and honours retries only where the profile asks for them (the cluster overlay does).
        pipeline = build_pipeline(args.pipeline, cfg)
        announce_plan(pipeline.pipeline_spec)
        record = run_local(pipeline, args.profile, args.set, Path(args.home))
    except LmforgeError as e:
        result.write_text(json.dumps({"ok": False, "error": str(e)}))
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.write_text(json.dumps({"ok": True, "record": record}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
