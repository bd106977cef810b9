"""The quantize stage on a briefly trained tiny model: int8 layers, smaller, loads, generates, same quality."""

from __future__ import annotations

import sys

import pytest
import torch

from components.common.config import load_config
from components.common.model_loading import load_model, quantized_linear_names
from components.quantize.run import quantize

# The tiny preset has 2 layers x (q, k, v, o, gate, up, down) linears; lm_head is tied to the
# embeddings and transformers leaves it out of weight-only quantization.
TINY_LINEARS = 14


@pytest.fixture(scope="module")
def trained_model(trained_tiny_model):
    return trained_tiny_model


def _cfg(tmp_path, method):
    return load_config(
        "tiny",
        [
            f"run.home={tmp_path / 'home'}",
            f"quantize.method={method}",
            "model.seq_len=64",
            "evaluate.heldout_max_tokens=6000",
        ],
    )


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, trained_model, tiny_dataset):
    out = tmp_path_factory.mktemp("int8")
    return out, quantize(_cfg(out, "int8_weight_only"), model_dir=trained_model, dataset_dir=tiny_dataset, out_dir=out)


def test_int8_model_loads_with_plain_from_pretrained_and_generates(int8_run):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(int8_run[0] / "model")
    assert len(quantized_linear_names(model)) == TINY_LINEARS
    prompt = torch.tensor([[5, 6, 7, 8]])
    out = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 10)


def test_int8_quantizes_every_block_linear_but_not_the_tied_head(int8_run):
    result = int8_run[1]
    assert result["metrics"]["quantized_linear_layers"] == TINY_LINEARS
    assert result["metrics"]["linear_layers"] == TINY_LINEARS + 1
    assert result["unquantized_linears"] == ["lm_head"]


def test_int8_model_is_smaller_on_disk(int8_run):
    metrics = int8_run[1]["metrics"]
    assert metrics["size_mb_after"] < metrics["size_mb_before"]
    # Block weights shrink 4x; the fp32 tied embedding (512 x 64) keeps the whole well above 1/4.
    assert 0.3 < metrics["size_ratio"] < 0.6


def test_int8_perplexity_stays_within_ten_percent(int8_run):
    metrics = int8_run[1]["metrics"]
    assert metrics["perplexity_before"] < 400  # trained: far below the uniform 512 of this vocab
    assert abs(metrics["perplexity_delta_pct"]) < 10.0
    assert metrics["perplexity_delta"] == pytest.approx(metrics["perplexity_after"] - metrics["perplexity_before"])


linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is measured through /proc")


@linux
def test_int8_reports_the_peak_memory_of_the_model_before_and_after(int8_run):
    metrics = int8_run[1]["metrics"]
    assert metrics["peak_memory_mb_before"] > 0
    assert metrics["peak_memory_mb_after"] > 0


@linux
def test_peak_memory_charges_no_one_time_import_cost_to_either_model(int8_run):
    # The tiny model's weights and activations take a few MB; what the warm-up keeps out is far more
    # (importing transformers' model code: ~200 MB, bitsandbytes: ~40 MB).
    metrics = int8_run[1]["metrics"]
    assert abs(metrics["peak_memory_mb_after"] - metrics["peak_memory_mb_before"]) < 20


def test_quantized_model_keeps_its_tokenizer(int8_run):
    from components.common.tokenizer import load_tokenizer

    tok = load_tokenizer(int8_run[0] / "model")
    assert tok.decode(tok.encode("To be, or not to be")) == "To be, or not to be"


def test_method_none_copies_the_model_unchanged(tmp_path, trained_model, tiny_dataset):
    result = quantize(_cfg(tmp_path, "none"), model_dir=trained_model, dataset_dir=tiny_dataset, out_dir=tmp_path)
    metrics = result["metrics"]
    assert result["method"] == "none"
    assert metrics["size_ratio"] == 1.0 and metrics["quantized_linear_layers"] == 0
    assert metrics["perplexity_after"] == metrics["perplexity_before"]
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == (trained_model / "model.safetensors").read_bytes()


def test_load_model_handles_plain_and_quantized_dirs(int8_run, trained_model):
    plain = load_model(trained_model)
    quant = load_model(int8_run[0] / "model")
    assert not plain.training and not quant.training
    assert quantized_linear_names(plain) == []
    assert len(quantized_linear_names(quant)) == TINY_LINEARS


def _quantize_address(*overrides):
    from components.common.artifacts import content_hash
    from components.common.stage import hashed_config
    from components.quantize.run import CONFIG_KEYS

    cfg = load_config("tiny", list(overrides))
    return content_hash("quantize", hashed_config(cfg, CONFIG_KEYS), {"base_model": "abc", "dataset": "def"})


def test_quantize_address_ignores_gate_rules_and_evaluation_tasks():
    base = _quantize_address()
    assert _quantize_address("evaluate.gate.guards=['lmforge_arithmetic_exact_match drop<=0.05']") == base
    assert _quantize_address("evaluate.gate.z=3.0", "evaluate.tasks=[lmforge_arithmetic]") == base


def test_quantize_address_changes_with_the_heldout_tokens_it_measures_perplexity_on():
    assert _quantize_address("evaluate.heldout_max_tokens=1000") != _quantize_address(
        "evaluate.heldout_max_tokens=2000"
    )
    assert _quantize_address("quantize.bits=3") != _quantize_address("quantize.bits=2")
