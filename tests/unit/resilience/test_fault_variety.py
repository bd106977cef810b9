"""Several kinds of faults in one run, and faults drawn at random from a seed: every faulted run ends
with the uninterrupted loss curve (bitwise), every fault really fires, and every recovery is reported.

Real Ray Train on the package's multi-node test cluster (``conftest.py``, ``cluster.py``: a CPU-less
head, two 1-CPU training nodes, a keeper-only node). One clean run is the reference for every faulted run of the module, and of
``test_recovery.py``, whose runs have the same length (``clean_runs``: trained once per session).
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import pytest

from components.resilience.faults import draw_faults, fired_faults
from tests.unit.resilience.cluster import (
    FAULTED_STEPS,
    RESILIENT_TRAINING,
    clean_run_once,
    train_on_cluster,
)

STEPS = FAULTED_STEPS
WORKERS = 2
#: the seeds ``make test`` draws fault plans from, one fault each: a restart costs ~15 s on 2 cores, and
#: several faults in one run are the four-kinds test's (more seeds, 3 faults each: tests/benchmarks/test_fault_draws.py)
SEEDS = (1, 2, 3)
FAULTS_PER_SEED = 1


def config(make_config, *overrides: str):
    return make_config(
        *RESILIENT_TRAINING,
        f"pretrain.steps={STEPS}",
        "pretrain.checkpoint_every=100",
        "pretrain.max_failures=6",
        "resilience.persist_every=4",
        # a hung rank is declared after 8 s without progress (tiny steps take well under 1 s)
        "resilience.hang_min_seconds=8",
        *overrides,
    )


def recoveries(summary: dict) -> list[dict]:
    return summary["callbacks"]["ResilienceCallback"]["recoveries"]


def markers(out: Path) -> list[str]:
    return fired_faults(str(out / "ckpt" / "pretrain" / "faults"))


def worker_logs() -> str:
    """Everything the Ray workers of this cluster wrote to stderr (the session's ``*.err`` files)."""
    import ray

    logs = os.path.join(ray._private.worker.global_worker.node.get_session_dir_path(), "logs")
    text = []
    for path in glob.glob(os.path.join(logs, "**", "*.err"), recursive=True):
        with open(path, errors="replace") as f:
            text.append(f.read())
    return "\n".join(text)


@pytest.fixture(scope="module")
def clean_run(cluster, clean_runs, tiny_dataset, tmp_path_factory) -> dict:
    from components.common.config import load_config

    home = tmp_path_factory.mktemp("clean")
    cfg = config(lambda *o: load_config("tiny", [f"run.home={home}", *o]))
    return clean_run_once(clean_runs, cfg, tiny_dataset, home)


def test_four_kinds_of_fault_in_one_run_each_recovered_and_reported(
    cluster, clean_run, make_config, tiny_dataset, tmp_path
):
    faults = "worker_crash@step=2,rank=1;commit_cut@step=4;keeper_crash@step=6,node=1;worker_hang@step=9,rank=1"
    summary = train_on_cluster(config(make_config, f"resilience.faults={faults}"), tiny_dataset, tmp_path)

    assert summary["loss_curve"] == clean_run["loss_curve"]
    assert markers(tmp_path) == sorted(
        ["worker_crash-step2-rank1.fired", "commit_cut-step4.fired", "keeper_crash-step6-node1.fired"]
        + ["worker_hang-step9-rank1.fired"]
    )
    # every restart is in the summary, in order, though each worker group started with fresh callbacks
    tiers = [(r["tier"], r["version"]) for r in recoveries(summary)]
    assert len(tiers) == 4, tiers
    crash, cut, keeper, hang = tiers
    assert crash[0] == "memory" and crash[1] in (1, 2)  # rank 1's snapshot 2 may not have been handed off
    first = recoveries(summary)[0]
    assert first["pieces_fetched"] == [2, 2]  # each rank: the k = 2 data pieces of its own group
    assert first["steps_lost"] == first["failed_at_step"] - first["version"]
    assert first["hosts"] == 3 and not first["less_protected"]  # the head holds no pieces
    assert cut == ("memory", 4)  # half-committed by the dying coordinator, settled on recovery
    assert keeper == ("decode", 6)  # the lost keeper's pieces decoded from the others
    assert hang == ("memory", 9)  # the hung rank never finished step 10

    logs = worker_logs()
    assert re.search(r"fault commit_cut: version 4 committed on \d of \d keepers", logs)
    assert "hang watchdog: rank 1 is hung in step 10" in logs
    assert "in hang_forever" in logs  # a line of the hung rank's stack


@pytest.mark.parametrize("seed", SEEDS)
def test_faults_drawn_from_a_seed_all_fire_and_the_run_replays_the_clean_loss_curve(
    cluster, clean_run, make_config, tiny_dataset, tmp_path, seed
):
    plan = draw_faults(seed, steps=STEPS, world_size=WORKERS, count=FAULTS_PER_SEED)
    spec = ";".join(str(f) for f in plan)
    summary = train_on_cluster(config(make_config, f"resilience.faults={spec}"), tiny_dataset, tmp_path)

    assert markers(tmp_path) == sorted(f.marker for f in plan), spec
    assert len(recoveries(summary)) == len(plan), (spec, recoveries(summary))  # each fault: one restart
    assert summary["loss_curve"] == clean_run["loss_curve"], spec


def test_spare_worker_processes_leave_the_loss_curve_of_a_crashed_run_unchanged(
    cluster, clean_run, make_config, tiny_dataset, tmp_path
):
    """Workers that preload their modules in prestarted processes (pretrain.spare_workers) train as cold ones."""
    faults = "resilience.faults=worker_crash@step=8,rank=1"
    summary = train_on_cluster(config(make_config, "pretrain.spare_workers=1", faults), tiny_dataset, tmp_path)

    assert [r["tier"] for r in recoveries(summary)] == ["memory"]
    assert summary["loss_curve"] == clean_run["loss_curve"]


def test_each_worker_group_reads_back_every_recovery_reported_before_it(make_config, tmp_path):
    """Without Ray: two worker groups in a row, each with fresh callbacks, as after two restarts."""
    from mlflow.tracking import MlflowClient

    from components.resilience.callback import ResilienceCallback, ResilienceTarget
    from components.resilience.recovery import RecoveryRecord

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("recoveries")).info.run_id
    target = ResilienceTarget(
        "run", "", (tmp_path / "faults").as_uri(), mlflow=(uri, run_id), recoveries_uri=(tmp_path / "rec").as_uri()
    )
    cfg = make_config("resilience.enabled=true")
    for tier, version in (("memory", 4), ("decode", 7)):
        group = ResilienceCallback(cfg, target)  # a restarted group starts empty ...
        group.recoveries = group._recorded_recoveries()  # ... and rank 0 reads the run's records in pre_train
        group._pending = RecoveryRecord(tier, version, 0.5, failed_at_step=version + 1, steps_lost=1)
        group._report_recovery(now=0.0)

    assert [(r["tier"], r["version"]) for r in group.state_dict()["recoveries"]] == [("memory", 4), ("decode", 7)]
    tags = client.get_run(run_id).data.tags
    assert '"tier": "memory"' in tags["lmforge.recovery.1"] and '"tier": "decode"' in tags["lmforge.recovery.2"]
