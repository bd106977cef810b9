"""Benchmark: fault plans drawn from more seeds than ``make test`` runs (three faults each instead of two).

For every seed, :func:`~components.resilience.faults.draw_faults` draws kinds (worker crash, worker
hang, keeper crash, commit cut), steps and ranks; the faulted run on the multi-node test cluster must
fire every fault, restart once per fault, and end with the loss curve of the clean run of the same
session, bitwise. Printed per seed: the plan, PASS or MISS (and why), and the recoveries (tier,
version, seconds from the failure to the first step after resume). The target is PASS for every
seed; the timings are reported, not asserted.
"""

from __future__ import annotations

import pytest

from tests.unit.resilience.cluster import training_cluster
from tests.unit.resilience.test_fault_variety import WORKERS, config, markers, recoveries, train

SEEDS = range(10, 16)
STEPS = 16
FAULTS_PER_RUN = 3


@pytest.fixture(scope="module")
def cluster():
    with training_cluster() as started:
        yield started


@pytest.fixture(scope="module")
def clean_curve(cluster, tiny_dataset, tmp_path_factory) -> list:
    from components.common.config import load_config

    home = tmp_path_factory.mktemp("clean")
    cfg = config(lambda *o: load_config("tiny", [f"run.home={home}", *o]), f"pretrain.steps={STEPS}")
    return train(cfg, tiny_dataset, home)["loss_curve"]


def test_fault_plans_drawn_from_seeds(cluster, clean_curve, make_config, tiny_dataset, tmp_path_factory):
    from components.resilience.faults import draw_faults

    misses = []
    for seed in SEEDS:
        plan = draw_faults(seed, steps=STEPS, world_size=WORKERS, count=FAULTS_PER_RUN)
        spec = ";".join(str(f) for f in plan)
        out = tmp_path_factory.mktemp(f"seed{seed}")
        cfg = config(make_config, f"pretrain.steps={STEPS}", "pretrain.max_failures=8", f"resilience.faults={spec}")
        problems = []
        try:
            summary = train(cfg, tiny_dataset, out)
        except Exception as e:  # a run that does not finish is a MISS for this seed, not the end of the bench
            summary, problems = None, [f"run failed: {type(e).__name__}: {e}"]
        if summary is not None:
            if markers(out) != sorted(f.marker for f in plan):
                problems.append(f"fired {markers(out)}")
            if len(recoveries(summary)) != len(plan):
                problems.append(f"{len(recoveries(summary))} recoveries for {len(plan)} faults")
            if summary["loss_curve"] != clean_curve:
                problems.append("loss curve differs from the clean run")
        done = recoveries(summary) if summary else []
        shown = ", ".join(f"{r['tier']}@{r['version']} {r['recovery_seconds'] or 0:.1f}s" for r in done)
        print(
            f"\n[bench] seed {seed}: {spec}: target every fault fires and the clean loss curve replays bitwise: "
            f"{'PASS' if not problems else 'MISS (' + '; '.join(problems) + ')'}; recoveries: {shown or 'none'}"
        )
        if problems:
            misses.append(seed)
    print(f"\n[bench] fault draws: {len(SEEDS) - len(misses)} of {len(SEEDS)} seeds PASS (target: all)")
    assert not misses, f"seeds that missed: {misses}"
