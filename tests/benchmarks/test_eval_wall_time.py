"""Benchmark: lmforge's evaluation wall time against the ``lm_eval`` command line, same task and model.

Both sides run as fresh processes on the session's trained tiny model and a shipped task, with the
same limit, batch size and seed, one after the other in the same run, each twice (the faster run
counts, so a burst of load on a shared machine does not decide the ratio):

- baseline: ``lm_eval run --model hf --model_args pretrained=<dir> --include_path <lmforge tasks>
  --tasks <task> ...``, the command a user would type;
- lmforge: a process that does what the evaluate stage does for its tasks: load the model through
  :mod:`components.common.model_loading`, then :func:`components.evaluate.harness.run_tasks`.

Both scores are printed too: the same model, task and seed must give the same numbers, or the
comparison would be between two different evaluations. Target: lmforge's wall time at most 1.1x the
command line's; the ratio, target and PASS/MISS are printed, nothing is asserted on time.

The command line always indexes all of lm-eval's ~14,000 task YAMLs before it runs (it has no
switch to skip them); lmforge indexes only its own task folder. That fixed cost is measured on its
own here and printed, so the ratio can be read with and without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from components.evaluate.tasks import TASKS_DIR

TARGET = 1.1
LIMIT = 200
BATCH = 16
SEED = 1234
TASKS = ["lmforge_shakespeare_order", "lmforge_arithmetic"]

LMFORGE = """
import json, sys
from components.common.model_loading import load_model
from components.common.tokenizer import load_tokenizer
from components.evaluate.harness import run_tasks
model_dir, task, limit, batch, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
metrics, _ = run_tasks(load_model(model_dir), load_tokenizer(model_dir), [task], limit=limit, batch_size=batch, seed=seed)
print("RESULT " + json.dumps(metrics))
"""

INDEX_ONLY = """
import time
from lm_eval.tasks import TaskManager
started = time.perf_counter()
TaskManager(include_defaults=True)
print(time.perf_counter() - started)
"""


def timed(cmd: list[str], cwd) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=True)
    return time.perf_counter() - started, proc


def lm_eval_cli(model_dir, task: str, out) -> list[str]:
    return [
        sys.executable,  # `python -m lm_eval` is the `lm_eval` console script of this environment
        "-m",
        "lm_eval",
        "run",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model_dir},dtype=float32",
        "--include_path",
        str(TASKS_DIR),
        "--tasks",
        task,
        "--limit",
        str(LIMIT),
        "--batch_size",
        str(BATCH),
        "--device",
        "cpu",
        "--seed",
        str(SEED),
        "--output_path",
        str(out),
    ]


def cli_scores(out, task: str) -> dict[str, float]:
    results = json.loads(sorted(out.rglob("results_*.json"))[-1].read_text())["results"][task]
    return {k: v for k, v in results.items() if isinstance(v, float)}


@pytest.fixture(scope="module")
def index_seconds() -> float:
    out = subprocess.run([sys.executable, "-c", INDEX_ONLY], capture_output=True, text=True, check=True).stdout
    return float(out)


@pytest.mark.parametrize("task", TASKS)
def test_evaluation_wall_time_against_the_lm_eval_command_line(task, tmp_path, trained_tiny_model, index_seconds):
    cli_times, ours_times = [], []
    for attempt in range(2):
        out = tmp_path / f"cli-{attempt}"
        seconds, _ = timed(lm_eval_cli(trained_tiny_model, task, out), tmp_path)
        cli_times.append(seconds)
        seconds, proc = timed(
            [sys.executable, "-c", LMFORGE, str(trained_tiny_model), task, str(LIMIT), str(BATCH), str(SEED)],
            tmp_path,
        )
        ours_times.append(seconds)
    ours = json.loads(proc.stdout.split("RESULT ", 1)[1])
    theirs = cli_scores(out, task)
    cli_s, ours_s = min(cli_times), min(ours_times)
    ratio, ratio_without_index = ours_s / cli_s, ours_s / max(cli_s - index_seconds, 1e-9)
    score = next(k for k in theirs if "stderr" not in k)
    metric, _, filter_name = score.partition(",")
    ours_key = f"{task}/{metric}" + ("" if filter_name == "none" else f"_{filter_name}")
    print(
        f"\n{task}, limit {LIMIT}, batch {BATCH}, best of 2 fresh processes each:\n"
        f"  lm_eval command line {cli_s:.1f} s (of which {index_seconds:.1f} s indexing lm-eval's built-in tasks), "
        f"lmforge {ours_s:.1f} s\n"
        f"  ratio lmforge/CLI {ratio:.2f} (target <= {TARGET}x: {'PASS' if ratio <= TARGET else 'MISS'}); "
        f"against the CLI without its task index {ratio_without_index:.2f} "
        f"({'PASS' if ratio_without_index <= TARGET else 'MISS'})\n"
        f"  same evaluation: {metric} CLI {theirs[score]:.4f}, lmforge {ours.get(ours_key, float('nan')):.4f}"
    )
