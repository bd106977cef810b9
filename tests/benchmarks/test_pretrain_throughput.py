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
