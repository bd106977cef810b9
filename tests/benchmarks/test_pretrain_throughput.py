"""Benchmark: pretraining throughput on Ray Train, 1 worker vs 2, on the tiny preset.

Prints tokens/s for each and the scaling ratio (2 workers vs 1, measured in the same run; on a 2-core
machine gloo all-reduce and the Python overhead keep it well below 2x). No timed assertion: the only
checks are that both runs trained (loss fell).
"""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("steps", [60])
def test_pretrain_throughput_scales_with_workers(make_config, tiny_dataset, tmp_path, steps):
    from components.pretrain.trainer import pretrain

    results = {}
    for workers in (1, 2):
        cfg = make_config(
            f"pretrain.num_workers={workers}",
            f"pretrain.steps={steps}",
            "pretrain.warmup_steps=5",
            f"pretrain.checkpoint_every={steps}",
            "evaluate.heldout_max_tokens=2000",
        )
        out = tmp_path / f"w{workers}"
        summary = pretrain(
            cfg,
            dataset_uri=tiny_dataset.as_uri(),
            output_uri=out.as_uri(),
            out_dir=out,
            checkpoint_uri=f"file://{out}/ckpt",
        )
        m = summary["metrics"]
        assert m["final_loss"] < m["initial_loss"]
        results[workers] = m["tokens_per_second"]
    ratio = results[2] / results[1]
    print(
        f"\n[bench] pretrain tiny, seq_len=128, batch 8/worker, {steps} steps: "
        f"1 worker {results[1]:,.0f} tok/s, 2 workers {results[2]:,.0f} tok/s, ratio 2w/1w = {ratio:.2f}x"
    )


TORCHRUN_TARGET = 0.9


def test_pretrain_throughput_vs_bare_torchrun_ddp(make_config, tiny_dataset, tmp_path):
    """lmforge's Ray Train loop vs a bare ``torchrun`` DDP loop (``torchrun_baseline.py``): same model, batch,
    data, optimizer and schedule, 2 local processes with gloo, one thread each; measured in the same run,
    the baseline first and again last, so that load from other processes on a shared box hits both."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from components.pretrain.trainer import pretrain

    steps, workers = 60, 2
    overrides = (
        f"pretrain.num_workers={workers}",
        f"pretrain.steps={steps}",
        "pretrain.warmup_steps=5",
        f"pretrain.checkpoint_every={steps}",
        "evaluate.heldout_max_tokens=2000",
    )
    cfg = make_config(*overrides)
    root = Path(__file__).resolve().parents[2]

    def torchrun(name: str) -> dict:
        out = tmp_path / f"{name}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}"]
        cmd += [str(root / "tests" / "benchmarks" / "torchrun_baseline.py"), str(tiny_dataset), str(out)]
        cmd += [arg for o in (f"run.home={cfg.run.home}", *overrides) for arg in ("--set", o)]
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(out.read_text())

    before = torchrun("baseline_before")
    out = tmp_path / "lmforge"
    summary = pretrain(
        cfg,
        dataset_uri=tiny_dataset.as_uri(),
        output_uri=out.as_uri(),
        out_dir=out,
        checkpoint_uri=f"file://{out}/ckpt",
    )
    after = torchrun("baseline_after")
    m = summary["metrics"]
    for run in (before, after):
        assert run["final_loss"] < run["initial_loss"]
    assert m["final_loss"] < m["initial_loss"]
    baseline = (before["tokens_per_second"] + after["tokens_per_second"]) / 2
    ratio = m["tokens_per_second"] / baseline
    print(
        f"\n[bench] pretrain tiny, {workers} processes x batch 8 x seq_len 128, {steps} steps: lmforge Ray Train loop "
        f"{m['tokens_per_second']:,.0f} tok/s vs bare torchrun DDP {baseline:,.0f} tok/s (runs before/after: "
        f"{before['tokens_per_second']:,.0f} / {after['tokens_per_second']:,.0f}, {before['threads']} thread(s)/process): "
        f"{ratio:.2f}x (target >= {TORCHRUN_TARGET}x) {'PASS' if ratio >= TORCHRUN_TARGET else 'MISS'}; final loss "
        f"{m['final_loss']:.3f} vs {before['final_loss']:.3f}"
    )
