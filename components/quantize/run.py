"""The quantize stage: one of several weight quantization methods, with a size, speed and quality report.

The methods (``quantize.method``) live in :mod:`components.quantize.methods`: torchao int8
weight-only and int8 dynamic, int4 and any-bit round-to-nearest weight-only, bitsandbytes LLM.int8()
and NF4/FP4. Each is applied the way transformers documents it, while loading
(``from_pretrained(..., quantization_config=...)``), then ``save_pretrained``; the saved directory
reloads with plain ``from_pretrained`` (checked: transformers 5.24, torchao 0.18, bitsandbytes 0.50
on CPU), so every later stage loads it through :mod:`components.common.model_loading`.

What is not quantized, and why: transformers leaves the output head (``lm_head``) and the input
embeddings out of weight quantization by default. The tiny and small presets tie the two, so the
embedding matrix (a large share of a small model) stays fp32. Quantizing it too
(``include_input_output_embeddings=True`` with untied weights) did not round-trip in this stack: the
embedding stayed fp32 and ``lm_head`` came back missing on reload. The report counts the linear
layers that really hold quantized weights after the reload, so such limits show in the numbers.

Quality is the held-out perplexity of the curated dataset (:mod:`components.training.heldout`),
before and after, measured on the model as reloaded from ``out_dir/model``; speed is greedy
generation tokens/s of the same prompt before and after. Peak memory is the most resident memory
(:mod:`components.common.memory`) that loading the model and measuring it (perplexity and
generation) needed beyond what the process held before, for the unquantized model and for the
reloaded quantized one. The one-time costs both would share (imports, the allocator's first arenas,
lazy initialisation in the first forward and ``generate``) are paid first by a throw-away one-layer
copy of the model (:func:`warm_up`), so they are not charged to the unquantized model, measured
first. For LLM.int8() the report counts the input columns that the outlier threshold sent through
the 16-bit path while measuring perplexity.

The **low-bit study** (``quantize.sweep_bits``, ``quantize.sweep_group_sizes``) quantizes the same
model by round-to-nearest at each bit width and group size and measures each the same way: one table
(``sweep.md``, ``sweep.json``) and a bits-vs-perplexity plot (``sweep.png``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from components.common.config import LifecycleConfig
from components.common.errors import ConfigError, StorageError
from components.common.log import get_logger
from components.common.memory import PeakMemory, peak_memory
from components.common.model_loading import (
    is_quantized,
    is_weight_file,
    linear_names,
    load_model,
    quantized_linear_names,
    weights_size_bytes,
)
from components.common.plots import sweep_plot
from components.quantize.methods import check_group_size, quantization_config, track_llm_int8_outliers, weight_bits
from components.training.heldout import heldout_loss, perplexity

log = get_logger("lmforge.quantize")

MB = 1024 * 1024

# What of the config changes a quantized model and its report, for the stage's content address: its
# own section, the model's shape, and the one evaluate knob it reads to measure perplexity (the batch
# size changes no number). Not the whole evaluate section: a new gate rule must not re-quantize.
CONFIG_KEYS = ("quantize", "model", "evaluate.heldout_max_tokens")


def generation_tokens_per_s(model, n_tokens: int) -> float:
    """Greedy generation speed: ``n_tokens`` new tokens from a fixed 8-token prompt, after one warm-up."""
    import torch

    device = next(model.parameters()).device
    prompt = torch.arange(8, 16, device=device).unsqueeze(0)
    kwargs = dict(max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(prompt, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # lazy inits, caches
        started = time.perf_counter()
        out = model.generate(prompt, **kwargs)
    return (out.shape[1] - prompt.shape[1]) / (time.perf_counter() - started)


def warm_up(model_dir: Path, qc, evaluate) -> None:
    """Pay, on a throw-away one-layer copy of the model (same config otherwise, random weights), what
    the first load and evaluation of a model costs once per process: library imports, the allocator's
    first arenas, lazy initialisation in a first forward and ``generate``. The copy is also quantized
    by ``quantize.method`` and loaded and evaluated again: the method's own first-use costs (its
    library's lazily imported modules) would otherwise be charged to the quantized model, measured
    second. ``evaluate(model)`` runs a short version of the measurement.

    These costs are paid once per process, so a second call for the same model type and method (a
    benchmark or test quantizing one model several times) does nothing."""
    import tempfile

    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True, num_hidden_layers=1)
    except (OSError, ValueError) as e:
        raise StorageError(f"cannot read the model config in {model_dir}: {e}") from e
    source_quantized = getattr(config, "quantization_config", None) is not None
    if hasattr(config, "quantization_config"):  # the copy is made in full precision
        del config.quantization_config
    # A quantized source is refused by the stage before it is quantized: nothing to warm up for it.
    wanted = {(config.model_type, "none")}
    if qc.method != "none" and not source_quantized:
        wanted.add((config.model_type, qc.method))
    if wanted <= _WARM:
        return
    with tempfile.TemporaryDirectory(prefix="lmforge-warm-up-") as tmp:
        # Saved and loaded again, so the loading path (safetensors, the loader's code) is warm too.
        copies = [Path(tmp) / "plain"]
        AutoModelForCausalLM.from_config(config).save_pretrained(copies[0])
        if len(wanted) > 1:
            check_group_size(qc, linear_in_features(load_model(copies[0])))
            copies.append(Path(tmp) / "quantized")
            save_quantized(copies[0], copies[1], qc)
        for copy in copies:
            model = load_model(copy)
            quantized_linear_names(model)  # imports bitsandbytes for any quantized model (~40 MB)
            evaluate(model)
            generation_tokens_per_s(model, 2)
            del model
    _WARM.update(wanted)


#: (model type, method) pairs whose one-time costs this process has paid (:func:`warm_up`).
_WARM: set[tuple[str, str]] = set()


def memory_metrics(before: PeakMemory, after: PeakMemory) -> dict[str, float]:
    """``peak_memory_mb_before`` / ``_after``, or nothing (with a warning) where it cannot be measured."""
    if before.increase_mb is None or after.increase_mb is None:
        log.warning("quantize: peak memory not measured: %s", before.unsupported or after.unsupported)
        return {}
    return {"peak_memory_mb_before": round(before.increase_mb, 2), "peak_memory_mb_after": round(after.increase_mb, 2)}


def quantize(cfg: LifecycleConfig, *, model_dir: Path, dataset_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Quantize the model in ``model_dir`` into ``out_dir/model`` and report size, speed and perplexity.

    Returns ``{"metrics": {...}, "method": ..., "quantized_modules": [...], "unquantized_linears": [...]}``
    (plus ``"llm_int8_outliers"`` and ``"sweep"`` when they apply). Metrics: ``size_mb_before``,
    ``size_mb_after``, ``size_ratio`` (after / before), ``weight_bits`` (effective bits per quantized
    weight, scales included), ``perplexity_before``, ``perplexity_after``, ``perplexity_delta``
    (after − before), ``perplexity_delta_pct``, ``heldout_loss_before``, ``heldout_loss_after``,
    ``tokens_per_s_before``, ``tokens_per_s_after``, ``peak_memory_mb_before``,
    ``peak_memory_mb_after`` (left out where the platform cannot measure them, see
    :mod:`components.common.memory`), ``quantized_linear_layers``, ``linear_layers``, and for
    ``llm_int8`` ``llm_int8_outlier_columns`` (summed over layers).
    """
    qc = cfg.quantize
    method = qc.method
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model_out = out_dir / "model"
    if model_out.exists():
        shutil.rmtree(model_out)  # a rerun into the same dir must not mix old and new weight files
    out_dir.mkdir(parents=True, exist_ok=True)

    def loss_of(model, max_tokens: int = cfg.evaluate.heldout_max_tokens) -> float:
        return heldout_loss(
            model, dataset_dir, seq_len=cfg.model.seq_len, max_tokens=max_tokens, batch_size=cfg.evaluate.batch_size
        )

    warm_up(model_dir, qc, lambda model: loss_of(model, max_tokens=cfg.evaluate.batch_size * (cfg.model.seq_len + 1)))
    with peak_memory() as memory_before:
        original = load_model(model_dir)
        if is_quantized(original) and method != "none":
            raise ConfigError(
                f"quantize.method={method}: the model in {model_dir} is already quantized; "
                "set quantize.method=none to pass it through"
            )
        check_group_size(qc, linear_in_features(original))
        loss_before = loss_of(original)
        speed_before = generation_tokens_per_s(original, qc.generate_tokens)
        del original

    if method == "none":
        shutil.copytree(model_dir, model_out)
    else:
        save_quantized(model_dir, model_out, qc)

    # Measure the model as a later stage will see it: reloaded from disk, not the in-memory object.
    with peak_memory() as memory_after:
        result = load_model(model_out)
        quantized = quantized_linear_names(result)
        linears = linear_names(result)
        if method != "none" and not quantized:
            raise ConfigError(f"quantize.method={method}: no linear layer of {model_dir} was quantized")
        outliers: dict[str, list[int]] = {}
        if method == "llm_int8":
            with track_llm_int8_outliers(result) as seen:
                loss_after = loss_of(result)
            outliers = {name: sorted(cols) for name, cols in seen.items() if cols}
        else:
            loss_after = loss_of(result)
        speed_after = generation_tokens_per_s(result, qc.generate_tokens)
        del result

    size_before, size_after = weights_size_bytes(model_dir), weights_size_bytes(model_out)
    ppl_before, ppl_after = perplexity(loss_before), perplexity(loss_after)
    metrics = {
        "size_mb_before": round(size_before / MB, 4),
        "size_mb_after": round(size_after / MB, 4),
        "size_ratio": round(size_after / size_before, 4),
        "weight_bits": weight_bits(qc) if method != "none" else 32.0,
        "perplexity_before": ppl_before,
        "perplexity_after": ppl_after,
        "perplexity_delta": ppl_after - ppl_before,
        "perplexity_delta_pct": 100.0 * (ppl_after - ppl_before) / ppl_before,
        "heldout_loss_before": loss_before,
        "heldout_loss_after": loss_after,
        "tokens_per_s_before": round(speed_before, 2),
        "tokens_per_s_after": round(speed_after, 2),
        **memory_metrics(memory_before, memory_after),
        "quantized_linear_layers": len(quantized),
        "linear_layers": len(linears),
    }
    summary: dict[str, Any] = {
        "metrics": metrics,
        "method": method,
        "quantized_modules": quantized,
        "unquantized_linears": [n for n in linears if n not in set(quantized)],
    }
    if method == "llm_int8":
        metrics["llm_int8_outlier_columns"] = sum(len(c) for c in outliers.values())
        summary["llm_int8_outliers"] = outliers
    log.info(
        "quantize %s: %d/%d linear layers quantized, weights %.2f MB -> %.2f MB (x%.2f), perplexity %.3f -> %.3f "
        "(%+.2f%%), %.0f -> %.0f tokens/s, peak memory %s -> %s MB",
        method,
        len(quantized),
        len(linears),
        metrics["size_mb_before"],
        metrics["size_mb_after"],
        metrics["size_ratio"],
        ppl_before,
        ppl_after,
        metrics["perplexity_delta_pct"],
        speed_before,
        speed_after,
        metrics.get("peak_memory_mb_before", "?"),
        metrics.get("peak_memory_mb_after", "?"),
    )
    if qc.sweep_bits:
        rows = low_bit_sweep(cfg, model_dir, dataset_dir, out_dir, baseline_perplexity=ppl_before)
        summary["sweep"] = rows
        for row in rows:
            metrics[f"sweep_perplexity_int{row['bits']}_g{row['group_size']}"] = row["perplexity"]
    return summary


def linear_in_features(model) -> list[int]:
    import torch

    return [m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)]


def save_quantized(model_dir: Path, model_out: Path, qc, method: str | None = None) -> None:
    """Load ``model_dir`` through the method's ``quantization_config`` and save it into ``model_out``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), quantization_config=quantization_config(qc, method), local_files_only=True, device_map="cpu"
    )
    model.save_pretrained(model_out)
    # Everything else the model directory carries (tokenizer, chat template, generation config) goes
    # along unchanged; the original weight files must not, they would shadow or duplicate the new ones.
    for f in model_dir.iterdir():
        if f.is_file() and not is_weight_file(f.name) and not (model_out / f.name).exists():
            shutil.copy2(f, model_out / f.name)


def low_bit_sweep(
    cfg: LifecycleConfig, model_dir: Path, dataset_dir: Path, out_dir: Path, *, baseline_perplexity: float
) -> list[dict[str, Any]]:
    """Round-to-nearest at each of ``quantize.sweep_bits`` × ``quantize.sweep_group_sizes``.

    Each point is quantized and measured like the stage's own method. Writes ``sweep.json``,
    ``sweep.md`` and ``sweep.png`` into ``out_dir``; returns the rows, fewest bits first.
    """
    qc = cfg.quantize
    from transformers import AutoModelForCausalLM

    rows = []
    for group in qc.sweep_group_sizes:
        for bits in sorted(qc.sweep_bits):
            point = dataclasses.replace(qc, method="intx_weight_only", bits=bits, group_size=group)
            # In memory: the same quantization_config path as the stage's saved models (whose
            # round trip the stage proves), without writing a model per point.
            model = AutoModelForCausalLM.from_pretrained(
                str(model_dir), quantization_config=quantization_config(point), local_files_only=True
            ).eval()
            loss = heldout_loss(
                model,
                dataset_dir,
                seq_len=cfg.model.seq_len,
                max_tokens=cfg.evaluate.heldout_max_tokens,
                batch_size=cfg.evaluate.batch_size,
            )
            ppl = perplexity(loss)
            rows.append(
                {
                    "bits": bits,
                    "group_size": group,
                    "weight_bits": weight_bits(point),
                    "perplexity": ppl,
                    "perplexity_delta_pct": 100.0 * (ppl - baseline_perplexity) / baseline_perplexity,
                }
            )
            log.info("sweep int%d g%d: perplexity %.3f (%+.2f%%)", bits, group, ppl, rows[-1]["perplexity_delta_pct"])
            del model
    (out_dir / "sweep.json").write_text(
        json.dumps({"baseline_perplexity": baseline_perplexity, "rows": rows}, indent=2)
    )
    (out_dir / "sweep.md").write_text(sweep_markdown(rows, baseline_perplexity))
    (out_dir / "sweep.png").write_bytes(sweep_plot(rows, baseline_perplexity))
    return rows


def sweep_markdown(rows: list[dict[str, Any]], baseline: float) -> str:
    lines = [
        f"Round-to-nearest weight-only quantization; unquantized perplexity {baseline:.4g}.",
        "",
        "| bits | group size | effective bits/weight | perplexity | Δ perplexity |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        group = r["group_size"] or "row"
        lines.append(
            f"| {r['bits']} | {group} | {r['weight_bits']:.2f} | {r['perplexity']:.4g} | "
            f"{r['perplexity_delta_pct']:+.2f}% |"
        )
    return "\n".join(lines) + "\n"
