"""Stability across checkpoints on the tiny scale (figures for the closing note; nothing asserted).

Pretrains the tiny preset on the quick-start Shakespeare through the real pretrain stage (Ray Train,
2 workers) keeping ``--k`` evaluation checkpoints (``pretrain.eval_checkpoints``), then measures each
one as the evaluate stage does (held-out perplexity; the two Shakespeare clozes scored by
log-likelihood and by blank perplexity) and prints the Kendall tau table of
:mod:`components.evaluate.stability`; ``stability.{json,md,png}`` go to ``--out``.

Run: ``nice -n 19 python -m tests.benchmarks.stability_experiment [--steps 200] [--k 5] [--limit 200]
[--out DIR]``: the pretraining (a local Ray) holds ``/tmp/lmforge-heavy.lock``, the evaluation does not.
"""

from __future__ import annotations

import argparse
import fcntl
import tempfile
import time
from pathlib import Path

LOCK = "/tmp/lmforge-heavy.lock"
TASKS = ["lmforge_shakespeare_cloze", "lmforge_shakespeare_order"]


def curated(root: Path, lines: int = 12_000) -> Path:
    """A curated-dataset directory (tokenizer, train/heldout shards, manifest) from the quick-start excerpt."""
    from tests.tiny_data import curated_shakespeare

    return curated_shakespeare(root, lines=lines, vocab_size=1024, train_fraction=0.95, shard_tokens=200_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(".lmforge/experiments/stability"))
    args = parser.parse_args()

    from components.common.config import load_config
    from components.evaluate.run import checkpoint_stability, eval_checkpoints_in
    from components.pretrain.trainer import pretrain
    from components.training.driver import ray_session

    work = Path(tempfile.mkdtemp(prefix="lmforge-stability-"))
    data = curated(work / "dataset")
    cfg = load_config(
        "tiny",
        [
            f"run.home={work / 'home'}",
            f"pretrain.steps={args.steps}",
            f"pretrain.eval_checkpoints={args.k}",
            f"pretrain.checkpoint_every={args.steps}",
            f"evaluate.tasks=[{','.join(TASKS)}]",
            f"evaluate.blank_tasks=[{','.join(TASKS)}]",
            f"evaluate.limit={args.limit}",
        ],
    )
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the machine's shared rule: one Ray/training job at a time
        started = time.time()
        with ray_session(cfg):
            pretrain(
                cfg,
                dataset_uri=data.as_uri(),
                output_uri=(work / "out").as_uri(),
                out_dir=work / "out",
                checkpoint_uri=(work / "checkpoints").as_uri(),
            )
        trained = time.time()
    checkpoints = eval_checkpoints_in(work / "out")
    args.out.mkdir(parents=True, exist_ok=True)
    summary = checkpoint_stability(cfg, checkpoints, {"shakespeare": data}, args.out)
    print((args.out / "stability.md").read_text())
    print(
        f"steps {args.steps}, K={len(summary['steps'])} checkpoints {summary['steps']}, limit {args.limit}: "
        f"pretraining {trained - started:.0f}s, evaluating {time.time() - trained:.0f}s; plot {args.out / 'stability.png'}"
    )


if __name__ == "__main__":
    main()
