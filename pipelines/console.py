"""What ``lmforge run`` shows while a pipeline runs locally: one line per step, full logs in files.

The pipeline runs in a child process (``python -m pipelines.local``) whose output, KFP's and every
step's, arrives here line by line; its first line (``lmforge-plan``) lists the steps in order.
:class:`RunLog` files each line under the step that printed it
(``<run.home>/logs/<run>/<task>.log``; KFP runs one task at a time and announces each with
"Executing task '<task>'") and keeps what a person wants to see per step: waiting, running with its
newest progress (``lmforge-progress`` lines from components/common/log.py, SFT step lines, lm-eval
tasks), done with its time and headline numbers (from the step's KFP metrics output), or failed
with the one-line reason the step recorded.

Views of that state live in pipelines/console_views.py: a live table on a terminal, plain lines on
a pipe, every line with ``--verbose``. KFP's
local-runner warnings about settings it ignores (resources, display names, the image) say nothing
to a user of the local runner, so they are dropped from the console, never from the log files.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from components.common.log import PROGRESS_MARK

PLAN_MARK = "lmforge-plan"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TASK_START = re.compile(r"Executing task '([^']+)'")
TASK_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
TASK_OUTPUTS = re.compile(r"Task '([^']+)' outputs:")
TASK_CACHED = re.compile(r"Task '?([\w-]+)'? cache hit")
METRICS_META = re.compile(r"metadata=(\{.*\})\s*\)\s*$")
# Warnings kfp.local prints for every step: settings it cannot honour, and the lmforge image it
# does not run (each followed by the source line Python's warnings module echoes).
NOISE = (
    re.compile(r"have no effect in the current local runner"),
    re.compile(r"custom or non-Python base image"),
)
NOISE_ECHO = re.compile(r"^\s*(_warn_local_only_noops\(|warnings\.warn\()")
# Progress that stages already log in their own words.
SFT_STEP = re.compile(r"sft step (\d+)/(\d+) loss ([0-9.]+)")
LM_EVAL = re.compile(r"lm-eval (\S+): ")
HELDOUT = re.compile(r"held-out (\S+): loss [0-9.]+, perplexity ([0-9.]+)")

#: Headline numbers of a finished step: (metric, label) pairs, shown when the step reports them.
HEADLINES = {
    "pretrain": (("final_loss", "loss"), ("heldout_loss", "held-out loss"), ("tokens_per_second", "tok/s")),
    "continual": (("final_loss", "loss"), ("new_heldout_loss_after", "new held-out"), ("forgetting", "forgetting")),
    "align": (("sft_loss_last", "SFT loss"), ("sft_heldout_answer_loss_after", "held-out answer loss")),
    "quantize": (("size_ratio", "size ratio"), ("perplexity_delta_pct", "perplexity change %")),
    "evaluate": (("heldout_perplexity", "perplexity"),),
}


@dataclass
class Step:
    """One pipeline task as the console sees it."""

    task: str
    label: str
    state: str = "waiting"  # waiting | running | done | failed
    started: float = 0.0
    seconds: float = 0.0
    progress: str = ""
    headline: str = ""
    reason: str = ""
    log_path: Path | None = None

    def status_text(self, now: float) -> str:
        if self.state == "running":
            elapsed = now - self.started
            return f"running {elapsed:4.0f}s" + (f"  {self.progress}" if self.progress else "")
        if self.state == "done":
            return f"done in {self.seconds:.1f}s" + (f"  {self.headline}" if self.headline else "")
        if self.state == "failed":
            return f"FAILED after {self.seconds:.1f}s: {self.reason or 'see its log'}"
        return "waiting"


def announce_plan(pipeline_spec, out: TextIO | None = None) -> None:
    """Print the ``lmforge-plan`` line (the steps in order, with display names) that :class:`RunLog` reads first."""
    plan = [{"task": s.task, "label": s.label} for s in plan_steps(pipeline_spec)]
    print(PLAN_MARK, json.dumps(plan), file=out or sys.stdout, flush=True)


def plan_steps(pipeline_spec) -> list[Step]:
    """The pipeline's tasks in an order KFP may run them (dependencies first), with their display names."""
    tasks = dict(pipeline_spec.root.dag.tasks)
    order: list[str] = []
    remaining = dict(tasks)
    while remaining:
        ready = sorted(n for n, t in remaining.items() if all(d in order for d in t.dependent_tasks))
        if not ready:  # a cycle cannot compile; keep whatever is left in name order
            ready = sorted(remaining)
        for n in ready[:1]:
            order.append(n)
            del remaining[n]
    return [Step(n, tasks[n].task_info.name or n) for n in order]


def _metric(value: float) -> str:
    if abs(value) >= 1000 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.4g}"


def headline(task: str, metrics: dict) -> str:
    """A step's headline numbers, e.g. ``records kept 3,412 · train tokens 301,022``."""
    stage = re.sub(r"-\d+$", "", task)
    if stage == "curate" and {"records_kept", "records_read", "train_tokens"} <= set(metrics):
        kept, read, tokens = (_metric(metrics[k]) for k in ("records_kept", "records_read", "train_tokens"))
        return f"{kept} of {read} records kept · {tokens} train tokens"
    if stage == "register" and "version" in metrics:
        return f"version {metrics['version']:.0f} → {'champion' if metrics.get('promoted') else 'challenger'}"
    parts = [f"{label} {_metric(metrics[key])}" for key, label in HEADLINES.get(stage, ()) if key in metrics]
    return " · ".join(parts)


class RunLog:
    """Files every line under its step and keeps each step's state; views read :attr:`steps`."""

    def __init__(
        self, steps: list[Step], log_dir: Path, errors_dir: Path | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.steps = {s.task: s for s in steps}
        self.errors_dir = errors_dir
        self.order = [s.task for s in steps]
        self.log_dir = log_dir
        self.clock = clock
        log_dir.mkdir(parents=True, exist_ok=True)
        self.run_log = open(log_dir / "pipeline.log", "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.current: Step | None = None
        self._step_file: TextIO | None = None
        self._outputs_of: Step | None = None
        self._noise_echo = False
        self.settled: set[str] = set()  # finished tasks whose outputs listing has been read

    def feed(self, raw: str) -> tuple[str, bool]:
        """Take one line of the child's output; returns (the line without colour codes, whether it is noise)."""
        line = ANSI.sub("", raw.rstrip("\n"))
        self.run_log.write(line + "\n")
        noise = self._is_noise(line)
        if line.startswith(PLAN_MARK + " "):  # for this console, not for a person: never shown
            for step in json.loads(line.removeprefix(PLAN_MARK + " ")):
                self._step(step["task"]).label = step["label"]
            noise = True
        elif m := TASK_START.search(line):
            self._start(m.group(1))
        elif m := TASK_END.search(line):
            self._write(line)
            self._end(m.group(1), m.group(2))
            return line, noise
        elif m := TASK_CACHED.search(line):  # KFP's cache answered: the step never runs
            step = self._step(m.group(1))
            step.state, step.headline = "done", "from KFP's cache"
            self.settled.add(step.task)
        elif m := TASK_OUTPUTS.search(line):
            self._outputs_of = self.steps.get(m.group(1))
        elif line.startswith("----------"):
            # KFP closes a task's listing (status, outputs) with a rule: its headline is known now.
            self._outputs_of = None
            self.settled.update(t for t, s in self.steps.items() if s.state in ("done", "failed"))
        if self._outputs_of is not None:
            self._read_output(self._outputs_of, line)
        self._write(line)
        if self.current is not None:
            self._read_progress(self.current, line)
        return line, noise

    def _is_noise(self, line: str) -> bool:
        if self._noise_echo:
            self._noise_echo = False
            if NOISE_ECHO.match(line):
                return True
        if any(p.search(line) for p in NOISE):
            self._noise_echo = True
            return True
        return False

    def _step(self, task: str) -> Step:
        if task not in self.steps:  # a task the plan did not know (should not happen): show it anyway
            self.steps[task] = Step(task, task)
            self.order.append(task)
        return self.steps[task]

    def _start(self, task: str) -> None:
        step = self._step(task)
        step.state, step.started = "running", self.clock()
        step.log_path = self.log_dir / f"{task}.log"
        if self._step_file:
            self._step_file.close()
        self._step_file = open(step.log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed at the step's end)
        self.current = step

    def _end(self, task: str, status: str) -> None:
        step = self._step(task)
        step.seconds = self.clock() - step.started if step.started else 0.0
        step.state = "done" if status.upper() == "SUCCESS" else "failed"
        step.progress = ""
        if step.state == "failed":
            step.reason = self._recorded_reason(step)
        if self._step_file:
            self._step_file.close()
            self._step_file = None
        self.current = None

    def _recorded_reason(self, step: Step) -> str:
        """The one-line reason a failing stage left in ``<home>/errors/`` (components/common/stage.py)."""
        if self.errors_dir is None or not self.errors_dir.is_dir():
            return ""
        recent = [p for p in self.errors_dir.glob("*.txt") if p.stat().st_mtime >= step.started - 1]
        if not recent:
            return ""
        return max(recent, key=lambda p: p.stat().st_mtime).read_text(encoding="utf-8").strip().splitlines()[0]

    def _write(self, line: str) -> None:
        if self._step_file is not None:
            self._step_file.write(line + "\n")
            self._step_file.flush()

    def _read_output(self, step: Step, line: str) -> None:
        # KFP lists a task's outputs as ``name: Type( name=…, uri=…, metadata={…} )``; the Metrics
        # output's metadata holds the step's numbers (a pointer's holds strings only).
        if not (m := METRICS_META.search(line)):
            return
        try:
            meta = ast.literal_eval(m.group(1))
        except (ValueError, SyntaxError):
            return
        numbers = {k: v for k, v in meta.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if text := headline(step.task, numbers):
            step.headline = text

    def _read_progress(self, step: Step, line: str) -> None:
        if PROGRESS_MARK in line:
            fields = dict(part.split("=", 1) for part in line.split(PROGRESS_MARK, 1)[1].split() if "=" in part)
            fields.pop("stage", None)
            step.progress = _progress_text(fields)
        elif m := SFT_STEP.search(line):
            step.progress = f"step {m.group(1)}/{m.group(2)} · loss {float(m.group(3)):.3f}"
        elif m := LM_EVAL.search(line):
            step.progress = f"task {m.group(1)} done"
        elif m := HELDOUT.search(line):
            step.progress = f"held-out {m.group(1)}: perplexity {float(m.group(2)):.2f}"

    def fail_current(self, reason: str) -> None:
        """Attach the run's failure reason to the step that failed (or to the one still running)."""
        failed = [s for s in self.steps.values() if s.state == "failed"]
        running = [s for s in self.steps.values() if s.state == "running"]
        for step in failed[-1:] or running[-1:]:
            if step.state == "running":
                step.state, step.seconds = "failed", self.clock() - step.started
            step.reason = step.reason or reason

    def close(self) -> None:
        if self._step_file:
            self._step_file.close()
        self.run_log.close()


def _progress_text(fields: dict[str, str]) -> str:
    names = {"tok_s": "tok/s", "docs": "documents kept"}
    parts = []
    for key, value in fields.items():
        if key == "step":
            parts.append(f"step {value}")
        elif key == "phase":
            parts.append(value)
        else:
            parts.append(f"{names.get(key, key)} {value}")
    return " · ".join(parts)


def follow(
    command: list[str], log: RunLog, view, *, env: dict[str, str] | None = None, clock: Callable[[], float] = time.time
) -> int:
    """Run ``command``, feeding its merged output to ``log`` and ``view``; returns its exit status.

    The child gets its own process group (so that stopping it cannot reach whoever started us):
    Ctrl-C or SIGTERM here is passed on to that group, which stops every step it started.
    """
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
        bufsize=1,
        errors="replace",
        start_new_session=True,
    )
    last_draw = 0.0

    def terminated(signum, frame):  # `kill`, `timeout`, a CI cancel: stop the pipeline with us
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line, noise = log.feed(raw)
            if not noise:
                view.line(line)
            now = clock()
            # Redraw on every state change, else at most 4 times a second.
            if now - last_draw >= 0.25 or TASK_START.search(line) or TASK_END.search(line):
                view.update(log, now)
                last_draw = now
        return proc.wait()
    except (KeyboardInterrupt, SystemExit) as e:
        os.killpg(proc.pid, signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def child_command(pipeline: str, profile: str, overrides: list[str], home: Path, result: Path) -> list[str]:
    """The ``python -m pipelines.local`` command that runs the pipeline and writes its result to ``result``."""
    cmd = [sys.executable, "-u", "-m", "pipelines.local", pipeline, "--profile", profile, "--home", str(home)]
    for o in overrides:
        cmd += ["--set", o]
    return [*cmd, "--result", str(result)]
