"""The hang watchdog declares a rank hung from its recent step times, logs its stack and ends it.

Bare training loops in child processes (the real TrainState, callbacks and ``worker_hang`` fault, a
sleep as the step's work), so that the watchdog's exit ends the child and not pytest; two ranks
talk over a real gloo process group. The end-to-end run under Ray Train, where the exit restarts the
worker group and the run replays the clean loss curve, is in ``test_fault_variety.py``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import traceback

import pytest

from components.common.errors import ConfigError
from components.resilience.watchdog import HANG_EXIT_CODE, HangWatchdog, in_collective

# One rank's loop: steps of `step_s` seconds with the watchdog and the fault injector as callbacks;
# a spec with `checkpoint_every` makes the gap after every such step a slow "checkpoint".
LOOP = textwrap.dedent(
    """
    import os, sys, time
    from types import SimpleNamespace
    import torch, torch.distributed as dist
    from components.training.callbacks import TrainState
    from components.resilience.faults import FaultInjector
    from components.resilience.watchdog import HangWatchdog

    rank, world, marker_dir, faults, step_s, checkpoint_every, checkpoint_s = sys.argv[1:8]
    rank, world, step_s, checkpoint_every, checkpoint_s = (
        int(rank), int(world), float(step_s), int(checkpoint_every), float(checkpoint_s)
    )
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    spec = SimpleNamespace(steps=12, cfg=SimpleNamespace(pretrain=SimpleNamespace(checkpoint_every=checkpoint_every)))
    state = TrainState(spec=spec, rank=rank, world_size=world, model=None, module=None, tokenizer=None,
                       optimizer=None, scheduler=None, batches=None)
    callbacks = [HangWatchdog(factor=4, min_seconds=1.5, poll_seconds=0.05),
                 FaultInjector([f for f in faults.split(";") if f], marker_dir)]
    for cb in callbacks:
        cb.pre_train(state)
    while state.step < spec.steps:
        time.sleep(step_s)  # forward and backward
        for cb in callbacks:
            cb.pre_optimizer_step(state)
        state.step += 1
        if world > 1:
            dist.all_reduce(torch.ones(1))  # the loss all-reduce every step ends with
        for cb in callbacks:
            cb.post_step(state)
        if checkpoint_every and state.step % checkpoint_every == 0:
            time.sleep(checkpoint_s)
    for cb in callbacks:
        cb.close()
    print("finished", flush=True)
    """
)


def start_rank(rank: int, world: int, tmp_path, faults: str = "", *, port: int = 0, checkpoint: tuple = (0, 0.0)):
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": ".", "PATH": "/usr/bin:/bin"}
    args = [str(rank), str(world), str(tmp_path), faults, "0.05", str(checkpoint[0]), str(checkpoint[1])]
    return subprocess.Popen(
        [sys.executable, "-c", LOOP, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_timeout_is_the_factor_times_the_median_step_but_never_below_the_minimum():
    watchdog = HangWatchdog(factor=10, min_seconds=2.0)
    assert watchdog.timeout() == 2.0  # nothing measured yet: the minimum
    watchdog.step_times.extend([0.1, 0.1, 9.0])  # one slow step does not move the median
    assert watchdog.timeout() == 2.0
    watchdog.step_times.extend([0.5, 0.5, 0.5])
    assert watchdog.timeout() == 10 * 0.5


def test_a_stack_inside_torch_distributed_is_waiting_for_a_peer():
    collective = [traceback.FrameSummary("/venv/lib/torch/distributed/distributed_c10d.py", 10, "all_reduce")]
    own = [traceback.FrameSummary("/app/components/resilience/faults.py", 5, "hang_forever")]
    assert in_collective(own + collective) and not in_collective(own)


def test_a_hung_rank_is_declared_with_its_stack_and_exits_with_the_hang_code(tmp_path):
    code, out, err = finish(start_rank(0, 1, tmp_path, "worker_hang@step=5"))
    assert code == HANG_EXIT_CODE and "finished" not in out
    assert "hang watchdog: rank 0 is hung in step 6: no progress for" in err
    assert "resilience.hang_factor=4" in err and "resilience.hang_min_seconds=1.5" in err
    assert "in hang_forever" in err  # the training thread's stack shows where it is stuck
    assert "stacks of every thread of rank 0" in err  # then faulthandler's dump of all threads


def test_steady_steps_and_slow_checkpoints_are_not_hangs(tmp_path):
    # step 8 is followed by a 2 s "checkpoint", longer than the 1.5 s timeout
    code, out, err = finish(start_rank(0, 1, tmp_path, checkpoint=(8, 2.0)))
    assert code == 0 and "finished" in out, err
    assert "hang watchdog" not in err


def test_the_rank_that_stopped_is_declared_first_while_its_peer_waits_in_the_collective(tmp_path):
    port = free_port()
    ranks = [start_rank(r, 2, tmp_path, "worker_hang@step=4,rank=1", port=port) for r in range(2)]
    hung_code, _, hung_err = finish(ranks[1])
    _, _, peer_err = finish(ranks[0])  # gloo fails its all-reduce once the hung rank is gone
    assert hung_code == HANG_EXIT_CODE
    assert "hang watchdog: rank 1 is hung in step 5" in hung_err and "in hang_forever" in hung_err
    # the waiting rank declares itself (if at all) only later and says it waits for a peer
    assert "rank 0 is hung" not in peer_err or "waiting inside a collective" in peer_err


def test_worker_hang_without_the_watchdog_is_a_config_error_naming_the_keys(make_config):
    from components.resilience.driver import fault_callbacks

    for off in ("resilience.enabled=false", "resilience.hang_factor=0"):
        cfg = make_config("resilience.enabled=true", off, "resilience.faults=worker_hang@step=3")
        with pytest.raises(ConfigError, match=r"set resilience.enabled=true and resilience.hang_factor > 0"):
            fault_callbacks(cfg, "file:///tmp/ckpt", "pretrain")


def test_hang_factor_below_two_is_refused_by_the_config(make_config):
    with pytest.raises(ConfigError, match=r"resilience.hang_factor: must be 0 \(off\) or >= 2"):
        make_config("resilience.hang_factor=1.5")
