"""Benchmark: how long a step process takes to exit once its work is done, with and without the exit
hook ``components/__init__.py`` registers (freeze live objects out of the cyclic GC before teardown).

Every kfp.local step, ``lmforge`` call and Ray worker is a process that imported torch, transformers
and MLflow; the interpreter's teardown then runs full collections over all their objects. Each run
below imports what a training step imports, prints the time its last statement ran and exits; the
time to exit is measured from that print to the process's end. The baseline is the same process with
the hook unregistered, measured in the same run, alternating. Target: the hook makes exit >= 2x
faster (median). Prints PASS or MISS; no timed assertion.

Run alone: ``flock /tmp/lmforge-heavy.lock python -m pytest tests/benchmarks/test_process_exit.py -s``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET, ROUNDS = 2.0, 5
STEP = """
import atexit, time
import components, components.common.lineage, torch, transformers.modeling_utils, mlflow
if {baseline}:
    atexit.unregister(components._freeze_before_exit)
print(time.time(), flush=True)
"""


def _exit_seconds(baseline: bool) -> float:
    proc = subprocess.Popen(
        [sys.executable, "-c", STEP.format(baseline=baseline)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    last_statement = float(proc.stdout.readline())
    proc.wait(timeout=300)
    return time.time() - last_statement


def test_process_exit_with_the_freeze_hook_against_without():
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(ROUNDS):
        for baseline in (True, False):
            times[baseline].append(_exit_seconds(baseline))
    ours, theirs = statistics.median(times[False]), statistics.median(times[True])
    ratio = theirs / ours
    print(f"\nprocess exit after importing torch, transformers, MLflow: median of {ROUNDS} (target >= {TARGET}x)")
    print("| exit hook | exit seconds | ratio | target |")
    print("|---|---|---|---|")
    print(f"| none (baseline) | {theirs:.2f} | 1.00x | |")
    print(f"| gc.freeze at exit | {ours:.2f} | {ratio:.2f}x | {'PASS' if ratio >= TARGET else 'MISS'} |")
