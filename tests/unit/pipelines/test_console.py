"""The console's reading of a pipeline's output: lines filed per step, progress, headlines, failures.

The lines are KFP 2.17's local-runner output as a run prints it (task banners, warnings, the outputs
listing) with lmforge's own progress lines in between; the whole-run behaviour, in a terminal and on a
pipe, is checked on real runs in tests/integration and tests/e2e.
"""

from __future__ import annotations

import io

import pytest

from pipelines.console import RunLog, Step
from pipelines.console_views import PlainView

NOOP = (
    "/venv/lib/python3.11/site-packages/kfp/local/orchestrator/task_executor.py:100: UserWarning: Task 'pretrain': "
    "settings ['display_name', 'memory_limit'] have no effect in the current local runner and will be ignored."
)
STREAM = [
    "14:31:38.190 - INFO - Executing task \x1b[96m'pretrain'\x1b[0m",
    NOOP,
    "  _warn_local_only_noops(task_name, task_spec, executor_spec.container)",
    "    (RayTrainWorker pid=4242) lmforge-progress stage=pretrain step=150/300 loss=5.123 tok_s=1830",
    "14:32:07.568 - INFO - Task \x1b[96m'pretrain'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m",
    "14:32:07.570 - INFO - Task \x1b[96m'pretrain'\x1b[0m outputs:",
    "    metrics: Metrics( name=metrics,",
    "                      uri=/home/kfp/pretrain/metrics,",
    "                      metadata={'final_loss': 4.25, 'initial_loss': 7.6, 'steps': 300.0} )",
    "--------------------------------------------------------------------------------",
]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def run_log(tmp_path):
    log = RunLog([Step("pretrain", "pretrain"), Step("evaluate", "evaluate")], tmp_path / "logs", clock=Clock())
    yield log
    log.close()


def test_a_steps_lines_go_to_its_own_log_file(run_log, tmp_path):
    for line in STREAM:
        run_log.feed(line)
    run_log.close()
    text = (tmp_path / "logs" / "pretrain.log").read_text()
    assert "step=150/300" in text and "finished with status SUCCESS" in text
    assert not (tmp_path / "logs" / "evaluate.log").exists()
    assert "metadata=" in (tmp_path / "logs" / "pipeline.log").read_text()


def test_kfp_local_runner_warnings_are_noise_but_stay_in_the_log(run_log, tmp_path):
    noise = [line for line in STREAM if run_log.feed(line)[1]]
    assert noise == [NOOP, STREAM[2]]
    run_log.close()
    assert "have no effect in the current local runner" in (tmp_path / "logs" / "pretrain.log").read_text()


def test_a_progress_line_becomes_the_running_steps_status(run_log):
    for line in STREAM[:4]:
        run_log.feed(line)
    step = run_log.steps["pretrain"]
    assert step.state == "running"
    assert step.progress == "step 150/300 · loss 5.123 · tok/s 1830"


def test_a_finished_step_shows_its_time_and_headline_numbers(run_log):
    for line in STREAM:
        run_log.feed(line)
    step = run_log.steps["pretrain"]
    assert step.state == "done" and step.headline == "loss 4.25"
    assert step.status_text(0).startswith("done in ")


def test_a_failed_step_shows_the_reason_its_stage_recorded(tmp_path):
    errors = tmp_path / "errors"
    errors.mkdir()
    log = RunLog([Step("curate", "curate pretrain corpus")], tmp_path / "logs", errors_dir=errors)
    log.feed("Executing task 'curate'")
    (errors / "curate-1.txt").write_text("corpus.txt: no records left after curation\n")
    log.feed("ERROR - Task 'curate' finished with status FAILURE")
    log.close()
    step = log.steps["curate"]
    assert step.state == "failed"
    assert step.status_text(0).endswith(": corpus.txt: no records left after curation")


def test_on_a_pipe_each_step_prints_when_it_starts_and_ends(run_log):
    out = io.StringIO()
    view = PlainView(out, started=100.0)
    for line in STREAM:
        run_log.feed(line)
        view.update(run_log, run_log.clock())
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "▶ pretrain" in lines[0] and "started" in lines[0]
    assert "✓ pretrain" in lines[1] and "loss 4.25" in lines[1]


def test_a_step_answered_from_kfps_cache_is_done_without_running(run_log):
    run_log.feed("INFO - Task evaluate cache hit (key=0123456789ab); skipping execution.")
    step = run_log.steps["evaluate"]
    assert step.state == "done" and "cache" in step.status_text(0)


def test_the_plan_line_lists_the_steps_in_order_with_their_display_names(tmp_path):
    log = RunLog([], tmp_path / "logs")
    log.feed(
        'lmforge-plan [{"task": "curate", "label": "curate pretrain corpus"}, {"task": "pretrain", "label": "pretrain"}]'
    )
    log.close()
    assert [(log.steps[t].label, log.steps[t].state) for t in log.order] == [
        ("curate pretrain corpus", "waiting"),
        ("pretrain", "waiting"),
    ]
