"""Run a pipeline on this machine through ``kfp.local``: every step a subprocess, no cluster.

``SubprocessRunner(use_venv=False)`` runs each component in the current interpreter, where lmforge
is installed, so a local run exercises exactly the component code the cluster runs in the image.
When a step fails, the one-line reason it recorded (see ``components.common.stage``) is raised as an
:class:`LmforgeError` instead of KFP's "inner task failed".
"""

from __future__ import annotations

import json
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
