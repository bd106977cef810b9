"""The quantization methods behind ``quantize.method``, each a transformers ``quantization_config``.

Every method is applied the way transformers documents it, while loading
(``from_pretrained(..., quantization_config=...)``), and saved with ``save_pretrained``, so the saved
directory carries its ``quantization_config`` and reloads with plain ``from_pretrained``
(:mod:`components.common.model_loading`). Checked on CPU with transformers 5.24, torchao 0.18 and
bitsandbytes 0.50: every method below saves, reloads and generates.

- ``int8_weight_only`` — torchao: int8 weights, one scale per output row; activations stay float.
- ``int8_dynamic`` — torchao: int8 weights and int8 activations quantized per token at run time.
- ``int4_weight_only`` — int4 weights in groups of ``quantize.group_size``: torchao's
  ``IntxWeightOnlyConfig`` on CPU, ``Int4WeightOnlyConfig`` (tinygemm kernels) on a GPU.
- ``intx_weight_only`` — round-to-nearest at ``quantize.bits`` (1..8) bits, symmetric, groups of
  ``quantize.group_size`` (0 = one scale per output row): the low-bit study's method
  (``IntxWeightOnlyConfig``). torchao stores such weights unpacked in int8, so on disk they are int8
  sized whatever the bit width; the report gives the *effective* bits per weight beside it.
- ``llm_int8`` — LLM.int8() (Dettmers et al., 2022) through bitsandbytes ``Linear8bitLt``: vector-wise
  int8, and every input column holding a value beyond ``quantize.llm_int8_threshold`` is multiplied
  in 16-bit instead (the mixed-precision outlier decomposition). The outlier columns actually seen
  on the held-out data are counted (:func:`track_llm_int8_outliers`).
- ``nf4`` / ``fp4`` — bitsandbytes 4-bit (QLoRA's NormalFloat4, or FP4), blocks of 64.
- GPTQ is not offered: neither library's newest release (checked 2026-12-03) installs here without
  replacing the pinned torch 2.13.0 / transformers 5.24.0: llm-compressor 0.14.0.1 requires
  ``transformers>=5.15.0,<=5.17.0``, gptqmodel 7.7.0 requires ``torch>=2.14.1``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from components.common.config import QUANTIZE_METHODS, QuantizeConfig
from components.common.errors import ConfigError

TORCHAO = ("int8_weight_only", "int8_dynamic", "int4_weight_only", "intx_weight_only")
BITSANDBYTES = ("llm_int8", "nf4", "fp4")
METHODS = QUANTIZE_METHODS


def weight_bits(qc: QuantizeConfig, method: str | None = None) -> float:
    """Effective bits per quantized weight, scales included (16-bit scales; bnb 4-bit: 32-bit per 64-block)."""
    method = method or qc.method
    group = qc.group_size
    per_group = 16 / group if group else 0.0  # a per-row scale is negligible per weight
    if method in ("int8_weight_only", "int8_dynamic", "llm_int8"):
        return 8.0
    if method == "int4_weight_only":
        return 4 + per_group
    if method == "intx_weight_only":
        return qc.bits + per_group
    if method in ("nf4", "fp4"):
        return 4 + 32 / 64
    return 32.0


def quantization_config(qc: QuantizeConfig, method: str | None = None):
    """The transformers ``quantization_config`` for ``method`` (default ``quantize.method``)."""
    import torch

    method = method or qc.method
    if method in BITSANDBYTES:
        from transformers import BitsAndBytesConfig

        if method == "llm_int8":
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=qc.llm_int8_threshold)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=method, bnb_4bit_compute_dtype=torch.float32)

    from transformers import TorchAoConfig

    return TorchAoConfig(_torchao_config(qc, method, gpu=torch.cuda.is_available()))


def _torchao_config(qc: QuantizeConfig, method: str, *, gpu: bool):
    import torch
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerAxis, PerGroup

    granularity = PerGroup(qc.group_size) if qc.group_size else PerAxis(0)
    if method == "int8_weight_only":
        return Int8WeightOnlyConfig()
    if method == "int8_dynamic":
        return Int8DynamicActivationInt8WeightConfig()
    if method == "int4_weight_only":
        if gpu:
            from torchao.quantization import Int4WeightOnlyConfig

            return Int4WeightOnlyConfig(group_size=qc.group_size or 128)
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=granularity)
    if method == "intx_weight_only":
        return IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{qc.bits}"), granularity=granularity)
    raise ConfigError(f"quantize.method: {method!r} is not a torchao method; choose one of {', '.join(METHODS)}")


def check_group_size(qc: QuantizeConfig, in_features: list[int]) -> None:
    """Group-wise methods need groups that tile every linear layer's input dimension."""
    if qc.method not in ("int4_weight_only", "intx_weight_only") or not qc.group_size:
        return
    bad = sorted({n for n in in_features if n % qc.group_size})
    if bad:
        raise ConfigError(
            f"quantize.group_size={qc.group_size} does not divide the input width of every linear layer "
            f"({', '.join(map(str, bad))}); choose a divisor such as 32, or 0 for one scale per row"
        )


@contextmanager
def track_llm_int8_outliers(model) -> Iterator[dict[str, set[int]]]:
    """While active, collect per ``Linear8bitLt`` layer the input columns LLM.int8 kept in 16-bit.

    bitsandbytes leaves the outlier columns of the last call in ``module.state.idx``; a forward hook
    unions them over every batch, so the count covers all the data the model saw meanwhile.
    """
    import bitsandbytes as bnb

    seen: dict[str, set[int]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            seen[name] = set()

            def hook(mod, _inputs, _output, name=name):
                idx = getattr(mod.state, "idx", None)
                if idx is not None and idx.numel():
                    seen[name].update(int(i) for i in idx.flatten().tolist())

            handles.append(module.register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()
