"""Ray Train's controller notes when each worker group started (components/training/timeline.py): pure
Python, the callback's hooks called in the order the controller calls them, no Ray."""

from __future__ import annotations

import json

from ray.train.v2._internal.execution.worker_group.poll import WorkerGroupPollStatus, WorkerStatus

from components.training.timeline import WorkerGroupTimeline, describe


def start_group(timeline: WorkerGroupTimeline) -> None:
    """The hooks the controller calls while a worker group starts, in its order."""
    timeline.before_worker_group_start(None)
    timeline.before_init_train_context([])
    timeline.after_worker_group_start(None)
    timeline.after_worker_group_training_start(None)


def test_a_restarted_group_has_the_failure_and_the_stop_of_the_one_before_it_in_order(tmp_path):
    uri = (tmp_path / "worker_groups.json").as_uri()
    timeline = WorkerGroupTimeline(uri, {})
    start_group(timeline)
    healthy = WorkerGroupPollStatus({0: WorkerStatus(running=True), 1: WorkerStatus(running=True)})
    failed = WorkerGroupPollStatus({0: WorkerStatus(running=True), 1: WorkerStatus(False, RuntimeError("x"))})
    timeline.after_worker_group_poll_status(healthy)
    timeline.after_worker_group_poll_status(failed)
    timeline.after_worker_group_poll_status(failed)  # the same failure polled again: the first poll counts
    timeline.after_worker_group_shutdown(None)
    start_group(timeline)

    first, second = json.loads((tmp_path / "worker_groups.json").read_text())
    assert list(first) == ["start", "actors_created", "actors_up", "launched"]
    assert list(second) == ["failure_noticed", "stopped", "start", "actors_created", "actors_up", "launched"]
    times = list(second.values())
    assert times == sorted(times)
    assert second["failure_noticed"] == timeline.groups[1]["failure_noticed"]


def test_describe_names_each_phase_with_its_seconds():
    group = {"failure_noticed": 10.0, "stopped": 10.5, "start": 10.5, "actors_created": 12.0, "actors_up": 13.25}

    assert describe(group) == (
        "previous group stopped +0.50 s, start began +0.00 s, placement group and worker actors +1.50 s, "
        "train context and process group +1.25 s"
    )


def timeline_module_without_ray_train_internals(monkeypatch):
    """A fresh copy of components/training/timeline.py loaded as if Ray had moved its callback classes."""
    import importlib.util
    import sys

    from components.training import timeline

    monkeypatch.setitem(sys.modules, "ray.train.v2._internal.execution.callback", None)  # import fails
    spec = importlib.util.spec_from_file_location("timeline_without_internals", timeline.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_ray_train_internals_the_timeline_is_off_with_one_warning(monkeypatch, tmp_path, caplog):
    import logging

    module = timeline_module_without_ray_train_internals(monkeypatch)
    logging.getLogger("lmforge.training").addHandler(caplog.handler)
    try:
        first = module.timeline_callbacks((tmp_path / "worker_groups.json").as_uri(), {})
        second = module.timeline_callbacks((tmp_path / "worker_groups.json").as_uri(), {})
    finally:
        logging.getLogger("lmforge.training").removeHandler(caplog.handler)

    assert first == [] and second == []
    # a record reaches caplog once or twice (our handler, and the root's when the logger propagates)
    warnings = {id(r) for r in caplog.records if "worker-group timeline off" in r.getMessage()}
    assert len(warnings) == 1


def test_with_ray_train_internals_the_driver_gets_the_timeline(tmp_path):
    from components.training.timeline import timeline_callbacks

    (callback,) = timeline_callbacks((tmp_path / "worker_groups.json").as_uri(), {})

    assert isinstance(callback, WorkerGroupTimeline)
