"""Fault specs parse from config and CLI; a worker_crash fault kills its worker once per run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from components.common.config import load_config
from components.common.errors import ConfigError
from components.resilience.faults import (
    ACCEPTED,
    DRAWN_KINDS,
    TAKES_NODE,
    TAKES_RANK,
    Fault,
    FaultInjector,
    draw_faults,
    faults_of_kind,
    fire_once,
    fired_faults,
    parse_fault,
    parse_faults,
)


def test_parses_each_fault_kind():
    assert parse_fault("worker_crash@step=4") == Fault("worker_crash", 4)
    assert parse_fault("node_loss@step=6,node=2") == Fault("node_loss", 6, node=2)
    assert parse_fault("node_loss@step=6") == Fault("node_loss", 6)
    assert parse_fault(" corrupt_piece @ step = 30 ") == Fault("corrupt_piece", 30)
    assert parse_fault("worker_crash@step=4,rank=1") == Fault("worker_crash", 4, rank=1)
    assert parse_fault("worker_hang@step=7") == Fault("worker_hang", 7)
    assert parse_fault("worker_hang@step=7,rank=1") == Fault("worker_hang", 7, rank=1)
    assert parse_fault("keeper_crash@step=5,node=1") == Fault("keeper_crash", 5, node=1)
    assert parse_fault("commit_cut@step=3") == Fault("commit_cut", 3)


def test_after_s_option_parses_prints_back_and_has_its_own_marker():
    fault = parse_fault("node_loss@step=23,node=1,after_s=60")
    assert fault == Fault("node_loss", 23, node=1, after_s=60)
    assert parse_fault(str(fault)) == fault
    assert parse_faults("worker_crash@step=4,rank=1,after_s=5;node_loss@step=6") == (
        Fault("worker_crash", 4, rank=1, after_s=5),
        Fault("node_loss", 6),
    )
    assert fault.marker != Fault("node_loss", 23, node=1).marker


def test_a_fault_with_after_s_is_due_from_its_step_once_the_time_has_come():
    plain, later = Fault("worker_crash", 4), Fault("worker_crash", 4, after_s=10)
    assert plain.due(4, 0.0) and not plain.due(5, 100.0) and not plain.due(3, 100.0)
    assert not later.due(4, 9.9), "not before after_s"
    assert later.due(4, 10.0) and later.due(7, 30.0), "at or after step S once the time has come"
    assert not later.due(3, 100.0), "never before step S"


def test_fault_prints_back_as_its_spec():
    assert str(Fault("node_loss", 6, node=2)) == "node_loss@step=6,node=2"
    assert parse_fault(str(Fault("worker_crash", 3))) == Fault("worker_crash", 3)
    assert str(Fault("worker_hang", 9, rank=1)) == "worker_hang@step=9,rank=1"
    assert parse_fault(str(Fault("keeper_crash", 2, node=0))) == Fault("keeper_crash", 2, node=0)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("worker_crash", "not of the form"),
        ("worker_crash@step=x", "not of the form"),
        ("disk_full@step=3", "unknown kind 'disk_full'"),
        ("worker_crash@step=0", "step must be >= 1"),
        ("worker_crash@step=3,node=1", "only node_loss and keeper_crash take node=N"),
        ("commit_cut@step=3,node=1", "only node_loss and keeper_crash take node=N"),
        ("node_loss@step=3,rank=1", "only worker_crash and worker_hang take rank=R"),
        ("keeper_crash@step=3,rank=1", "only worker_crash and worker_hang take rank=R"),
        ("worker_crash@step=3,host=1", "unknown option host="),
        ("worker_crash@step=3,after_s=x", "not of the form"),
        ("worker_hang@step=3,rank=1,rank=0", "rank= given twice"),
    ],
)
def test_bad_spec_is_a_config_error_naming_spec_key_and_accepted_forms(spec, problem):
    with pytest.raises(ConfigError) as info:
        parse_fault(spec)
    message = str(info.value)
    assert "resilience.faults" in message and repr(spec) in message and problem in message
    assert ACCEPTED in message
    for form in ("worker_crash@step=S[,rank=R]", "worker_hang@step=S[,rank=R]", "keeper_crash@step=S[,node=N]"):
        assert form in message
    assert "commit_cut@step=S" in message


def test_cli_override_separates_faults_with_semicolons():
    cfg = load_config("tiny", ["resilience.faults=worker_crash@step=4;node_loss@step=6,node=2"])
    assert cfg.resilience.faults == ["worker_crash@step=4", "node_loss@step=6,node=2"]
    assert parse_faults(cfg.resilience.faults) == (Fault("worker_crash", 4), Fault("node_loss", 6, node=2))


def test_single_node_loss_with_node_survives_the_cli_list_split():
    cfg = load_config("tiny", ["resilience.faults=node_loss@step=6,node=2"])
    assert parse_faults(cfg.resilience.faults) == (Fault("node_loss", 6, node=2),)


def test_comma_between_faults_is_forgiven():
    faults = parse_faults("worker_crash@step=4,node_loss@step=6,node=2,corrupt_piece@step=8")
    assert faults == (Fault("worker_crash", 4), Fault("node_loss", 6, node=2), Fault("corrupt_piece", 8))


def test_comma_between_faults_is_forgiven_with_rank_options_too():
    faults = parse_faults("worker_crash@step=2,rank=1,keeper_crash@step=6,node=1,worker_hang@step=9,rank=1")
    assert faults == (
        Fault("worker_crash", 2, rank=1),
        Fault("keeper_crash", 6, node=1),
        Fault("worker_hang", 9, rank=1),
    )


def test_faults_of_a_run_each_have_their_own_marker():
    markers = {f.marker for f in parse_faults("worker_crash@step=4;worker_crash@step=4,rank=1;commit_cut@step=4")}
    assert markers == {"worker_crash-step4.fired", "worker_crash-step4-rank1.fired", "commit_cut-step4.fired"}


def test_fired_faults_lists_the_markers_written_by_fire_once(tmp_path):
    assert fired_faults(str(tmp_path)) == []
    assert fire_once(tmp_path.as_uri(), Fault("keeper_crash", 6, node=1), "step 6")
    assert not fire_once(tmp_path.as_uri(), Fault("keeper_crash", 6, node=1), "step 6 again")
    assert fired_faults(str(tmp_path)) == ["keeper_crash-step6-node1.fired"]


def test_same_seed_draws_the_same_plan_and_other_seeds_other_plans():
    plans = {seed: draw_faults(seed, steps=12, world_size=2) for seed in range(20)}
    assert draw_faults(3, steps=12, world_size=2) == plans[3]
    assert len(set(plans.values())) > 10


@pytest.mark.parametrize("seed", range(50))
def test_drawn_plan_fits_the_run_and_spaces_its_faults(seed):
    plan = draw_faults(seed, steps=12, world_size=2, count=3)
    steps = [f.step for f in plan]
    assert steps == sorted(steps) and all(2 <= s <= 10 for s in steps)
    assert all(b - a >= 3 for a, b in zip(steps, steps[1:], strict=False))
    for fault in plan:
        assert fault.kind in DRAWN_KINDS
        assert parse_fault(str(fault)) == fault  # every drawn fault is a valid spec
        assert (fault.rank is not None) == (fault.kind in TAKES_RANK)
        assert (fault.node is not None) == (fault.kind in TAKES_NODE)
        assert 0 <= (fault.rank if fault.rank is not None else fault.node or 0) < 2


def test_a_plan_that_cannot_be_spaced_is_refused():
    with pytest.raises(ValueError, match="cannot place 4 faults 3 steps apart in a run of 8 steps"):
        draw_faults(0, steps=8, world_size=2, count=4)


def test_other_list_overrides_still_split_on_commas():
    cfg = load_config("tiny", ["evaluate.tasks=a,b"])
    assert cfg.evaluate.tasks == ["a", "b"]


def test_faults_of_kind_selects_in_step_order():
    faults = parse_faults(["node_loss@step=9", "worker_crash@step=4", "node_loss@step=6,node=1"])
    assert faults_of_kind(faults, "node_loss") == (Fault("node_loss", 6, node=1), Fault("node_loss", 9))
    assert faults_of_kind(faults, "corrupt_piece") == ()


# A stand-in for one worker's loop: the real TrainState, the real callback, steps 1..6 in a child
# process so that os._exit ends the child and not pytest.
WORKER = textwrap.dedent(
    """
    import sys
    from components.training.callbacks import TrainState
    from components.resilience.faults import FaultInjector

    rank, marker_dir = int(sys.argv[1]), sys.argv[2]
    faults = sys.argv[3].split(";") if len(sys.argv) > 3 else ["worker_crash@step=4", "node_loss@step=2,node=1"]
    # each step "takes" this many seconds of the injector's clock (after_s), deterministically
    step_s = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    import types
    import components.resilience.faults as faults_module
    clock = [0.0]
    faults_module.time = types.SimpleNamespace(monotonic=lambda: clock[0], sleep=faults_module.time.sleep)
    injector = FaultInjector(faults, marker_dir)
    state = TrainState(spec=None, rank=rank, world_size=2, model=None, module=None, tokenizer=None,
                       optimizer=None, scheduler=None, batches=None)
    injector.pre_train(state)
    for step in range(1, 7):
        clock[0] += step_s
        state.step = step
        print("step", step, flush=True)
        injector.post_step(state)
    print("finished", flush=True)
    """
)


def run_worker(rank: int, marker_dir, faults: str | None = None, step_s: float = 0.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WORKER, str(rank), str(marker_dir), *([faults, str(step_s)] if faults else [])],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_crash_kills_rank_zero_after_its_step_and_only_once(tmp_path):
    first = run_worker(0, tmp_path)
    assert first.returncode == 1
    assert first.stdout.split("\n")[-2] == "step 4", "the crash must come right after step 4"
    assert "injecting fault worker_crash@step=4" in first.stderr, "logs must be flushed before the exit"
    assert (tmp_path / "worker_crash-step4.fired").is_file()

    restarted = run_worker(0, tmp_path)  # Ray Train restarts the group from an earlier step
    assert restarted.returncode == 0
    assert restarted.stdout.strip().endswith("finished")
    assert "already fired" in restarted.stderr


def test_worker_crash_spares_other_ranks(tmp_path):
    result = run_worker(1, tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("finished")
    assert not list(tmp_path.iterdir())


def test_worker_crash_with_rank_kills_that_rank_and_spares_rank_zero(tmp_path):
    spared = run_worker(0, tmp_path, "worker_crash@step=3,rank=1")
    assert spared.returncode == 0 and spared.stdout.strip().endswith("finished")
    crashed = run_worker(1, tmp_path, "worker_crash@step=3,rank=1")
    assert crashed.returncode == 1 and crashed.stdout.split("\n")[-2] == "step 3"
    assert "injecting fault worker_crash@step=3,rank=1" in crashed.stderr
    assert fired_faults(str(tmp_path)) == ["worker_crash-step3-rank1.fired"]


def test_worker_crash_with_after_s_waits_for_its_time_then_fires_once(tmp_path):
    # steps of 1 s: step 2 is reached at 2 s, but the fault waits until 3 s into the group's training
    crashed = run_worker(0, tmp_path, "worker_crash@step=2,after_s=3", step_s=1.0)
    assert crashed.returncode == 1 and crashed.stdout.split("\n")[-2] == "step 3"
    assert "injecting fault worker_crash@step=2,after_s=3" in crashed.stderr
    assert fired_faults(str(tmp_path)) == ["worker_crash-step2-after3s.fired"]
    # the restarted group, past S and past the time: looks the marker up once, not every step
    restarted = run_worker(0, tmp_path, "worker_crash@step=2,after_s=3", step_s=1.0)
    assert restarted.returncode == 0 and restarted.stdout.strip().endswith("finished")
    assert restarted.stderr.count("already fired") == 1
    # a run too short for the time never fires it
    short = run_worker(0, tmp_path / "short", "worker_crash@step=2,after_s=60", step_s=1.0)
    assert short.returncode == 0 and not (tmp_path / "short").exists()


def test_fault_naming_a_rank_beyond_the_world_is_a_config_error(tmp_path):
    result = run_worker(0, tmp_path, "worker_hang@step=3,rank=2")
    assert result.returncode != 0
    assert "ConfigError: resilience.faults: worker_hang@step=3,rank=2 names rank 2; ranks are 0..1" in result.stderr


@pytest.mark.parametrize("fault", ["keeper_crash@step=3,node=1", "commit_cut@step=3"])
def test_faults_on_keepers_need_resilience_enabled(make_config, fault):
    from components.resilience.driver import fault_callbacks

    cfg = make_config("resilience.enabled=false", f"resilience.faults={fault}")
    with pytest.raises(
        ConfigError, match=f"resilience.faults: {fault} act on snapshot keepers; set resilience.enabled"
    ):
        fault_callbacks(cfg, "file:///tmp/ckpt", "pretrain")


def test_injector_from_config_reads_the_faults_key(make_config, tmp_path):
    cfg = make_config("resilience.faults=worker_crash@step=3;corrupt_piece@step=5")
    injector = FaultInjector.from_config(cfg, str(tmp_path))
    assert injector.crash_steps == {3}
    assert injector.marker_uri == f"file://{tmp_path.resolve()}"
