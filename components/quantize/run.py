"""The quantize stage: weight-only int8 through torchao, with a size and quality report.

Quantization is done the way transformers documents it: load the model with
``quantization_config=TorchAoConfig(Int8WeightOnlyConfig())``, which hands every eligible
``nn.Linear`` to ``torchao.quantization.quantize_`` while loading (int8 weights, one scale per output
row), then ``save_pretrained``. Checked here with transformers 5.23 / torchao 0.18 on CPU: that
writes safetensors (torchao flattens its tensor subclasses) and the result loads back with plain
``AutoModelForCausalLM.from_pretrained`` and generates, so no ``safe_serialization=False`` pickle
fallback is needed.

What is not quantized, and why: transformers leaves the output head (``lm_head``) and the input
embeddings out of weight-only quantization by default. The tiny and small presets tie the two, so the
embedding matrix (a large share of a small model) stays fp32. Quantizing it too
(``include_input_output_embeddings=True`` with untied weights) did not round-trip in this stack: the
embedding stayed fp32 and ``lm_head`` came back missing on reload. The report counts the linear
layers that really hold int8 weights after the reload, so such limits show in the numbers.

Quality is the held-out perplexity of the curated dataset (:mod:`components.training.heldout`),
before and after, measured on the model as reloaded from ``out_dir/model``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from components.common.config import LifecycleConfig
from components.common.errors import ConfigError
from components.common.log import get_logger
from components.common.model_loading import (
    is_quantized,
    is_weight_file,
    linear_names,
    load_model,
    quantized_linear_names,
    weights_size_bytes,
)
from components.training.heldout import heldout_loss, perplexity

log = get_logger("lmforge.quantize")

MB = 1024 * 1024


def torchao_config(method: str):
    """The torchao config object behind a ``quantize.method`` name."""
    if method == "int8_weight_only":
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()
    raise ConfigError(f"quantize.method: no torchao config for {method!r}; use int8_weight_only or none")


def quantize(cfg: LifecycleConfig, *, model_dir: Path, dataset_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Quantize the model in ``model_dir`` into ``out_dir/model`` and report size and perplexity.

    Returns ``{"metrics": {...}, "method": ..., "quantized_modules": [...], "unquantized_linears": [...]}``.
    Metrics: ``size_mb_before``, ``size_mb_after``, ``size_ratio`` (after / before),
    ``perplexity_before``, ``perplexity_after``, ``perplexity_delta`` (after − before),
    ``perplexity_delta_pct``, ``heldout_loss_before``, ``heldout_loss_after``,
    ``quantized_linear_layers``, ``linear_layers``.
    """
    method = cfg.quantize.method
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model_out = out_dir / "model"
    if model_out.exists():
        shutil.rmtree(model_out)  # a rerun into the same dir must not mix old and new weight files
    out_dir.mkdir(parents=True, exist_ok=True)

    def loss_of(model) -> float:
        return heldout_loss(
            model,
            dataset_dir,
            seq_len=cfg.model.seq_len,
            max_tokens=cfg.evaluate.heldout_max_tokens,
            batch_size=cfg.evaluate.batch_size,
        )

    original = load_model(model_dir)
    if is_quantized(original) and method != "none":
        raise ConfigError(
            f"quantize.method={method}: the model in {model_dir} is already quantized; "
            "set quantize.method=none to pass it through"
        )
    loss_before = loss_of(original)
    del original

    if method == "none":
        shutil.copytree(model_dir, model_out)
    else:
        _quantize_with_torchao(model_dir, model_out, method)

    # Measure the model as a later stage will see it: reloaded from disk, not the in-memory object.
    result = load_model(model_out)
    quantized = quantized_linear_names(result)
    linears = linear_names(result)
    if method != "none" and not quantized:
        raise ConfigError(f"quantize.method={method}: no linear layer of {model_dir} was quantized by torchao")
    loss_after = loss_of(result)

    size_before, size_after = weights_size_bytes(model_dir), weights_size_bytes(model_out)
    ppl_before, ppl_after = perplexity(loss_before), perplexity(loss_after)
    metrics = {
        "size_mb_before": round(size_before / MB, 4),
        "size_mb_after": round(size_after / MB, 4),
        "size_ratio": round(size_after / size_before, 4),
        "perplexity_before": ppl_before,
        "perplexity_after": ppl_after,
        "perplexity_delta": ppl_after - ppl_before,
        "perplexity_delta_pct": 100.0 * (ppl_after - ppl_before) / ppl_before,
        "heldout_loss_before": loss_before,
        "heldout_loss_after": loss_after,
        "quantized_linear_layers": len(quantized),
        "linear_layers": len(linears),
    }
    log.info(
        "quantize %s: %d/%d linear layers int8, weights %.2f MB -> %.2f MB (x%.2f), perplexity %.3f -> %.3f (%+.2f%%)",
        method,
        len(quantized),
        len(linears),
        metrics["size_mb_before"],
        metrics["size_mb_after"],
        metrics["size_ratio"],
        ppl_before,
        ppl_after,
        metrics["perplexity_delta_pct"],
    )
    return {
        "metrics": metrics,
        "method": method,
        "quantized_modules": quantized,
        "unquantized_linears": [n for n in linears if n not in set(quantized)],
    }


def _quantize_with_torchao(model_dir: Path, model_out: Path, method: str) -> None:
    from transformers import AutoModelForCausalLM, TorchAoConfig

    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), quantization_config=TorchAoConfig(torchao_config(method)), local_files_only=True
    )
    model.save_pretrained(model_out)
    # Everything else the model directory carries (tokenizer, chat template, generation config) goes
    # along unchanged; the original weight files must not, they would shadow or duplicate the new ones.
    for f in model_dir.iterdir():
        if f.is_file() and not is_weight_file(f.name) and not (model_out / f.name).exists():
            shutil.copy2(f, model_out / f.name)
