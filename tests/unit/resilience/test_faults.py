"""Fault specs parse from config and CLI; a worker_crash fault kills its worker once per run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from components.common.config import load_config
from components.common.errors import ConfigError
from components.resilience.faults import Fault, FaultInjector, faults_of_kind, parse_fault, parse_faults


def test_parses_each_fault_kind():
    assert parse_fault("worker_crash@step=4") == Fault("worker_crash", 4)
    assert parse_fault("node_loss@step=6,node=2") == Fault("node_loss", 6, node=2)
    assert parse_fault("node_loss@step=6") == Fault("node_loss", 6)
    assert parse_fault(" corrupt_piece @ step = 30 ") == Fault("corrupt_piece", 30)


def test_fault_prints_back_as_its_spec():
    assert str(Fault("node_loss", 6, node=2)) == "node_loss@step=6,node=2"
    assert parse_fault(str(Fault("worker_crash", 3))) == Fault("worker_crash", 3)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("worker_crash", "not of the form"),
        ("worker_crash@step=x", "not of the form"),
        ("disk_full@step=3", "unknown kind 'disk_full'"),
        ("worker_crash@step=0", "step must be >= 1"),
        ("worker_crash@step=3,node=1", "only node_loss takes node"),
    ],
)
def test_bad_spec_is_a_config_error_naming_spec_key_and_accepted_forms(spec, problem):
    with pytest.raises(ConfigError) as info:
        parse_fault(spec)
    message = str(info.value)
    assert "resilience.faults" in message and repr(spec) in message and problem in message
    assert "worker_crash@step=S, node_loss@step=S[,node=N], corrupt_piece@step=S" in message


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
    injector = FaultInjector(["worker_crash@step=4", "node_loss@step=2,node=1"], marker_dir)
    state = TrainState(spec=None, rank=rank, world_size=2, model=None, module=None, tokenizer=None,
                       optimizer=None, scheduler=None, batches=None)
    injector.pre_train(state)
    for step in range(1, 7):
        state.step = step
        print("step", step, flush=True)
        injector.post_step(state)
    print("finished", flush=True)
    """
)


def run_worker(rank: int, marker_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WORKER, str(rank), str(marker_dir)], capture_output=True, text=True, timeout=60
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


def test_injector_from_config_reads_the_faults_key(make_config, tmp_path):
    cfg = make_config("resilience.faults=worker_crash@step=3;corrupt_piece@step=5")
    injector = FaultInjector.from_config(cfg, str(tmp_path))
    assert injector.crash_steps == {3}
    assert injector.marker_uri == f"file://{tmp_path.resolve()}"
