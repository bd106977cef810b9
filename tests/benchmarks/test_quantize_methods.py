"""Benchmark: every quantization method against the unquantized model, in one run on CPU.

On the session's trained tiny model (``trained_tiny_model``), each ``quantize.method`` runs through
the quantize stage's library (quantize, save, reload, measure): size on disk, held-out perplexity and
greedy generation tokens/s, each as a ratio to the unquantized model measured in the same run. Peak
memory twice: the stage's own ``peak_memory_mb_after`` ("model MB": what loading and evaluating the
reloaded model needed above the process's resident set, components/common/memory.py), and the peak
RSS of a child process per method that loads the saved model and generates ("process MB"), printed
beside that of a child that only imports torch and transformers (the tiny model's weights are well
under 1 MB, so on this model the libraries dominate the process and its ratio stays near 1).

Then the low-bit study: round-to-nearest at 2/3/4/5/6/8 bits with groups of 32 and per row.

Targets (PASS/MISS): perplexity within 2% of the unquantized model for the 8-bit methods, within 15%
for the 4-bit ones; smaller on disk than the unquantized model. No timed assertion.
"""

from __future__ import annotations

import json
import subprocess
import sys

from components.common.config import load_config
from components.quantize.run import quantize

METHODS = ["none", "int8_weight_only", "int8_dynamic", "llm_int8", "int4_weight_only", "nf4", "fp4"]
PPL_TARGET_PCT = {"int8_weight_only": 2, "int8_dynamic": 2, "llm_int8": 2, "int4_weight_only": 15, "nf4": 15, "fp4": 15}

CHILD = """
import json, resource, sys
import torch, transformers  # the baseline's footprint
if sys.argv[1] != "-":
    from components.common.model_loading import load_model
    model = load_model(sys.argv[1])
    with torch.no_grad():
        model.generate(torch.arange(8, 16).unsqueeze(0), max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def peak_rss_mb(model_dir: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, model_dir], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["maxrss_kb"] / 1024


def _mb(row: dict, key: str) -> str:
    return f"{row[key]:.1f}" if key in row else "—"  # not measured where /proc cannot reset the peak


def _ratio(row: dict, ref: dict, key: str) -> str:
    return f"{row[key] / ref[key]:.2f}" if key in row and key in ref else "—"


def _cfg(home, method: str, *extra: str):
    return load_config(
        "tiny",
        [
            f"run.home={home}",
            f"quantize.method={method}",
            "model.seq_len=64",
            "evaluate.heldout_max_tokens=20000",
            *extra,
        ],
    )


def test_quantization_methods_against_the_unquantized_model(tmp_path, trained_tiny_model, tiny_dataset):
    base_rss = peak_rss_mb("-")
    rows = {}
    for method in METHODS:
        out = tmp_path / method
        result = quantize(_cfg(out, method), model_dir=trained_tiny_model, dataset_dir=tiny_dataset, out_dir=out)
        rows[method] = {**result["metrics"], "peak_mb": peak_rss_mb(str(out / "model"))}
    ref = rows["none"]
    print(f"\nchild process peak RSS with torch + transformers imported and no model: {base_rss:.1f} MB")
    print("quantization methods on the trained tiny model (ratios to the unquantized model, same run)")
    print(
        f"{'method':18} {'size MB':>8} {'x size':>7} {'bits':>5} {'ppl':>8} {'Δppl %':>7} {'tok/s':>7} {'x tok/s':>7} {'model MB':>8} {'x model':>7} {'process MB':>10} {'x proc':>6}  outliers  target"
    )
    for method, r in rows.items():
        target = PPL_TARGET_PCT.get(method)
        ok = target is None or (abs(r["perplexity_delta_pct"]) <= target and r["size_mb_after"] < ref["size_mb_after"])
        verdict = "—" if target is None else f"|Δppl|<={target}% & smaller: {'PASS' if ok else 'MISS'}"
        print(
            f"{method:18} {r['size_mb_after']:8.3f} {r['size_mb_after'] / ref['size_mb_after']:7.2f} {r['weight_bits']:5.1f} "
            f"{r['perplexity_after']:8.3f} {r['perplexity_delta_pct']:+7.2f} {r['tokens_per_s_after']:7.1f} "
            f"{r['tokens_per_s_after'] / ref['tokens_per_s_after']:7.2f} {_mb(r, 'peak_memory_mb_after'):>8} "
            f"{_ratio(r, ref, 'peak_memory_mb_after'):>7} {r['peak_mb']:10.1f} {r['peak_mb'] / ref['peak_mb']:6.2f}  "
            f"{r.get('llm_int8_outlier_columns', '—')!s:>8}  {verdict}"
        )


def test_low_bit_sweep(tmp_path, trained_tiny_model, tiny_dataset):
    cfg = _cfg(tmp_path, "none", "quantize.sweep_bits=[2,3,4,5,6,8]", "quantize.sweep_group_sizes=[32,0]")
    result = quantize(cfg, model_dir=trained_tiny_model, dataset_dir=tiny_dataset, out_dir=tmp_path)
    print("\nlow-bit round-to-nearest sweep on the trained tiny model")
    print((tmp_path / "sweep.md").read_text())
    print(f"plot: {tmp_path / 'sweep.png'}")
    assert result["sweep"]
