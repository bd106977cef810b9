"""Load any model lmforge writes, plain or quantized, with one call.

A torchao- or bitsandbytes-quantized model is saved by transformers as ordinary safetensors plus a
``quantization_config`` block (``quant_method: torchao`` or ``bitsandbytes``) in ``config.json``; on
load, transformers sees that block and rebuilds the quantized tensors and layers itself. So the loader is plain
``AutoModelForCausalLM.from_pretrained`` for both kinds; what it adds is the offline flag, eval mode,
a clear error naming the directory, and a way to see which layers are actually quantized
(:func:`quantized_linear_names`), because "it loaded" does not prove "it is int8".
"""

from __future__ import annotations

from pathlib import Path

from components.common.errors import StorageError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def is_weight_file(name: str) -> bool:
    """Weight shards and their index (``model.safetensors.index.json``)."""
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith((".safetensors.index.json", ".bin.index.json"))


def load_model(path: str | Path, *, device: str = "cpu"):
    """The causal LM saved in ``path`` (quantized or not), in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise StorageError(f"{path}: no config.json; expected a model saved with save_pretrained")
    try:
        if _saved_quant_method(path) == "bitsandbytes":
            # bitsandbytes layers are placed while loading; moving them afterwards with .to() is refused.
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, device_map=device)
            return model.eval()
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise StorageError(f"cannot load the model in {path}: {e}") from e
    return model.to(device).eval()


def _saved_quant_method(path: Path) -> str:
    import json

    config = json.loads((path / "config.json").read_text())
    return (config.get("quantization_config") or {}).get("quant_method", "")


def is_quantized(model) -> bool:
    return getattr(model.config, "quantization_config", None) is not None


def quantized_linear_names(model) -> list[str]:
    """Names of the ``nn.Linear`` modules that really hold quantized weights: a torchao quantized
    tensor, or a bitsandbytes 8-bit/4-bit layer (``Linear8bitLt``, ``Linear4bit``)."""
    import torch
    from torchao.utils import TorchAOBaseTensor

    bnb_layers: tuple[type, ...] = ()
    if getattr(model.config, "quantization_config", None) is not None:
        try:
            import bitsandbytes as bnb

            bnb_layers = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
        except ImportError:  # a torchao-only environment: no bitsandbytes layer can be present
            pass
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and (isinstance(module.weight, TorchAOBaseTensor) or isinstance(module, bnb_layers))
    ]


def linear_names(model) -> list[str]:
    import torch

    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def weights_size_bytes(model_dir: str | Path) -> int:
    """Bytes on disk of the weight files in ``model_dir`` (config and tokenizer files excluded)."""
    return sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
