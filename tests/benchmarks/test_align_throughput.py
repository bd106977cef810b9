"""Benchmark: SFT and DPO samples/s of the align stage against trl's own trainers run directly.

The stage's trainers are trl's ``SFTTrainer`` and ``DPOTrainer`` configured by lmforge
(:mod:`components.align.trainer`, :mod:`components.align.dpo`); the baseline is the same trl class
constructed the way trl's documentation does it (its config defaults, CPU, no reporting) on the same
model, data, batch size, step count and one process, measured in the same run. Target: lmforge at
>= 0.9x trl's samples/s (trl's own ``train_samples_per_second``). Prints PASS or MISS; no timed
assertion.

Run alone: ``flock /tmp/lmforge-heavy.lock python -m tests.benchmarks.test_align_throughput``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tests.benchmarks.align_experiment import SHAKESPEARE, tiny_model
from tests.unit.align.conftest import planted_pairs

TARGET = 0.9
STEPS, BATCH, MAX_LEN = 20, 8, 128
QUICKSTART_GSM8K = Path(__file__).resolve().parents[2] / "pipelines" / "data" / "quickstart" / "gsm8k_train.jsonl"


def _setup(work: Path):
    from components.align.chat import install_chat_template
    from components.common.config import load_config
    from components.common.tokenizer import load_tokenizer

    text = SHAKESPEARE.read_text(encoding="utf-8").splitlines()[:3000]
    docs = [d.strip() for d in "\n".join(text).split("\n\n") if len(d.strip()) > 20]
    model_dir = tiny_model(docs, work / "model", seq_len=MAX_LEN)
    tok = load_tokenizer(model_dir)
    install_chat_template(tok)
    pairs_file = work / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(r) + "\n" for r in planted_pairs(120)), encoding="utf-8")
    cfg = load_config(
        "tiny",
        [
            f"run.home={work / 'home'}",
            f"align.source={QUICKSTART_GSM8K}",
            f"align.steps={STEPS}",
            "align.warmup_steps=2",
            f"align.batch_size={BATCH}",
            f"align.max_len={MAX_LEN}",
            f"align.preferences={pairs_file}",
            "align.method=dpo",
            f"align.pref_steps={STEPS}",
            f"align.pref_batch_size={BATCH}",
        ],
    )
    return cfg, model_dir, tok


def _model(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir)


def sft_ratio(cfg, model_dir, tok, work: Path) -> tuple[float, float]:
    from trl import SFTConfig, SFTTrainer

    from components.align.data import read_pairs
    from components.align.trainer import build_trainer, to_dataset

    pairs, _ = read_pairs(cfg.align.source, "question", "answer", max_pairs=STEPS * BATCH)
    ours, _ = build_trainer(cfg, _model(model_dir), tok, pairs, pairs[:4], work / "ours")
    lmforge = ours.train().metrics["train_samples_per_second"]
    args = SFTConfig(
        output_dir=str(work / "trl"),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        max_length=MAX_LEN,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
    )
    trl = SFTTrainer(model=_model(model_dir), args=args, train_dataset=to_dataset(pairs), processing_class=tok)
    return lmforge, trl.train().metrics["train_samples_per_second"]


def dpo_ratio(cfg, model_dir, tok, work: Path) -> tuple[float, float]:
    from trl import DPOConfig, DPOTrainer

    from components.align.dpo import train_dpo
    from components.align.preference_data import to_dataset
    from components.common.preferences import read_preferences, split_preferences

    pairs, _ = read_preferences(cfg.align.preferences)
    train, heldout = split_preferences(pairs, cfg.align.pref_heldout_fraction)
    lmforge = train_dpo(cfg, _model(model_dir), _model(model_dir), tok, train, heldout[:4])["metrics"][
        "dpo_samples_per_second"
    ]
    args = DPOConfig(
        output_dir=str(work / "trl-dpo"),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        max_length=MAX_LEN,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
    )
    trainer = DPOTrainer(
        model=_model(model_dir),
        ref_model=_model(model_dir),
        args=args,
        train_dataset=to_dataset(train),
        processing_class=tok,
    )
    return lmforge, trainer.train().metrics["train_samples_per_second"]


def test_align_throughput_against_trl():
    with tempfile.TemporaryDirectory(prefix="lmforge-align-bench-") as tmp:
        work = Path(tmp)
        cfg, model_dir, tok = _setup(work)
        rows = {"SFT": sft_ratio(cfg, model_dir, tok, work), "DPO": dpo_ratio(cfg, model_dir, tok, work)}
    print(f"\nalign throughput, {STEPS} steps x {BATCH} per step, 1 process, tiny model (target >= {TARGET}x trl)")
    print("| trainer | lmforge samples/s | trl samples/s | ratio | target |")
    print("|---|---|---|---|---|")
    for name, (ours, theirs) in rows.items():
        ratio = ours / theirs
        print(f"| {name} | {ours:.2f} | {theirs:.2f} | {ratio:.2f}x | {'PASS' if ratio >= TARGET else 'MISS'} |")


if __name__ == "__main__":
    test_align_throughput_against_trl()
