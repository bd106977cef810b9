"""Run a datatrove pipeline on the configured executor: ``local`` or ``ray``, same steps, same output.

``local`` is datatrove's :class:`~datatrove.executor.LocalPipelineExecutor` (tasks run in this
process one after another when ``workers == 1``, else in a process pool); ``ray`` is datatrove's
:class:`~datatrove.executor.ray.RayPipelineExecutor` on the Ray this process is connected to, or on
``curate.ray_address`` (a local Ray started here, or ``ray://…`` on KubeRay). Either way the stage
reads the merged ``stats.json`` that datatrove writes into ``logging_dir`` (with every task's log and
completion marker: artifacts of the step), and a task that did not complete fails the stage, naming
its log.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from components.common.errors import ConfigError, DataError
from components.common.log import get_logger
from components.common.ray_session import ray_session

log = get_logger(__name__)
EXECUTORS = ("local", "ray")
# Ray reserves memory per task; datatrove's default (2 GB per CPU) would not fit small nodes, and the
# per-document steps stream, so a modest reservation is honest.
RAY_MEM_PER_CPU_GB = 0.5


def run_pipeline(
    pipeline: Sequence, *, logging_dir: Path, tasks: int, workers: int, executor: str, ray_address: str = "local"
) -> list[dict]:
    """Run ``pipeline`` as ``tasks`` datatrove tasks; return the merged per-step stats (``stats.json``)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"curate.executor: must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    logging_dir = Path(logging_dir)
    shutil.rmtree(logging_dir, ignore_errors=True)  # a fresh run: no stale completion markers
    workers = tasks if workers == -1 else min(workers, tasks)
    if executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        LocalPipelineExecutor(
            list(pipeline), tasks=tasks, workers=workers, logging_dir=str(logging_dir), skip_completed=False
        ).run()
    else:
        from datatrove.executor.ray import RayPipelineExecutor

        with ray_session(ray_address, workers, name="lmforge-curate"):
            RayPipelineExecutor(
                list(pipeline),
                tasks=tasks,
                workers=workers,
                logging_dir=str(logging_dir),
                skip_completed=False,
                cpus_per_task=1,
                mem_per_cpu_gb=RAY_MEM_PER_CPU_GB,
            ).run()
    missing = [r for r in range(tasks) if not (logging_dir / "completions" / f"{r:05d}").is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {tasks} curate task(s) did not complete on the {executor} executor "
            f"(ranks {missing[:10]}); see {logging_dir / 'logs'}/task_<rank>.log"
        )
    return json.loads((logging_dir / "stats.json").read_text())
