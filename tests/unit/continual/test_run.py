"""Continual pretraining end to end on Ray Train (2 workers, one Ray for the module): it starts from
a saved model, re-warms the LR (WSD), replays the old corpus, reports forgetting on both held-out
sets and branches a decay off the stable phase, which it sends downstream (continual.publish_branch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from components.common.config import load_config
from components.common.errors import DataError
from components.continual.run import continual
from components.training.driver import ray_session

STEPS, WARMUP, PROBE_EVERY, LR, BRANCH, DECAY = 12, 4, 4, 2e-3, 8, 2


@pytest.fixture(scope="module")
def ray_cluster():
    with ray_session(load_config("tiny")):
        yield


@pytest.fixture(scope="module")
def adapted(ray_cluster, tmp_path_factory, tiny_model, tiny_dataset, wikitext_dataset):
    """tiny_model (Shakespeare tokenizer) continued on WikiText with a quarter of each batch replayed."""
    root = tmp_path_factory.mktemp("continual")
    cfg = load_config(
        "tiny",
        [
            f"run.home={root / 'home'}",
            f"continual.steps={STEPS}",
            f"continual.warmup_steps={WARMUP}",
            f"continual.lr={LR}",
            "continual.replay_fraction=0.25",
            "continual.schedule=wsd",  # decay over the last 2 steps (0.2 x 12)
            f"continual.branch_at={BRANCH}",
            f"continual.publish_branch={BRANCH}",  # the branch becomes model/, the main run branches/final/
            "continual.average=uniform",  # the main run's model: the mean of the weights after steps 8 and 12
            "continual.average_every=4",
            "continual.average_last_k=2",
            f"continual.probe_every={PROBE_EVERY}",
            "continual.probe_density=1",  # uniform probes: the points are easy to state (density: test_forgetting)
            "pretrain.num_workers=2",
            "pretrain.checkpoint_every=100",
        ],
    )
    result = continual(
        cfg,
        model_uri=tiny_model.as_uri(),
        dataset_uri=wikitext_dataset.as_uri(),
        old_dataset_uri=tiny_dataset.as_uri(),
        output_uri=(root / "out").as_uri(),
        out_dir=root / "out",
        checkpoint_uri=(root / "checkpoints").as_uri(),
    )
    return {"cfg": cfg, "result": result, "out": root / "out", "new": wikitext_dataset.name}


def test_reports_forgetting_on_old_and_new_heldout(adapted):
    m = adapted["result"]["metrics"]
    for key in (
        "old_heldout_loss_before",
        "old_heldout_loss_after",
        "new_heldout_loss_before",
        "new_heldout_loss_after",
    ):
        assert 0 < m[key] < 10
    assert m["forgetting"] == pytest.approx(m["old_heldout_loss_after"] - m["old_heldout_loss_before"])
    assert m["new_heldout_loss_after"] < m["new_heldout_loss_before"]  # it did learn the new corpus
    assert m["final_loss"] < m["initial_loss"]


def test_forgetting_and_adaptation_are_named_by_corpus(adapted, tiny_dataset, wikitext_dataset):
    m, corpora = adapted["result"]["metrics"], adapted["result"]["corpora"]
    old, new = tiny_dataset.name, wikitext_dataset.name  # no source in the fixtures' manifests: the directory
    assert corpora == {"old": [old], "new": new}
    assert m[f"forgetting/{old}"] == pytest.approx(m["forgetting"])
    assert m[f"adaptation/{new}"] == pytest.approx(m["adaptation"]) and m["adaptation"] > 0
    new_curve = adapted["result"]["heldout_curves"][new]
    assert [s for s, _ in new_curve] == [0, 4, 8, 12]  # the new corpus is probed as often as the old


def test_old_heldout_is_probed_during_training(adapted):
    curve = adapted["result"]["old_heldout_curve"]
    m = adapted["result"]["metrics"]
    assert [s for s, _ in curve] == [0, 4, 8, 12]
    assert curve[0][1] == pytest.approx(m["old_heldout_loss_before"])
    # The last probe and the "after" number use the same windows and the same weights (the main run's
    # numbers carry final/: the stage's are the published branch's).
    assert curve[-1][1] == pytest.approx(m["final/old_heldout_loss_after"], rel=1e-4)
    assert m["final/old_heldout_loss_peak"] == pytest.approx(max(loss for _, loss in curve[1:]))
    assert m["stability_gap"] >= 0
    assert json.loads((adapted["out"] / "old_heldout_curve.json").read_text()) == curve


def test_lr_rewarms_from_zero_then_decays(adapted):
    curve = adapted["result"]["lr_curve"]
    assert [s for s, _ in curve] == list(range(1, STEPS + 1))
    lrs = [lr for _, lr in curve]
    assert lrs[:WARMUP] == pytest.approx([LR * (i + 1) / WARMUP for i in range(WARMUP)])
    assert all(a >= b for a, b in zip(lrs[WARMUP:], lrs[WARMUP + 1 :], strict=False))


def test_wsd_decay_branch_follows_the_stable_run_then_decays_into_its_own_model(adapted):
    main = [lr for _, lr in adapted["result"]["lr_curve"]]
    branch = adapted["result"]["branches"][BRANCH]
    lrs = [lr for _, lr in branch["lr_curve"]]
    assert len(lrs) == BRANCH + DECAY and lrs[:BRANCH] == main[:BRANCH]  # the stable run, carried over
    assert main[BRANCH] == pytest.approx(LR)  # the main run stays stable past the branch point
    assert lrs[BRANCH:] == pytest.approx([LR, LR * (0.1 + 0.9 * (1 - 0.5**0.5))])  # 1-sqrt decay
    assert Path(branch["model_uri"].removeprefix("file://"), "model.safetensors").exists()
    assert adapted["result"]["metrics"][f"branch_{BRANCH}/heldout_loss_after/{adapted['new']}"] > 0


def test_published_branch_is_the_stage_model_and_its_numbers_the_stage_metrics(adapted):
    from safetensors.torch import load_file

    result, out, new = adapted["result"], adapted["out"], adapted["new"]
    branch_dir = Path(result["branches"][BRANCH]["model_uri"].removeprefix("file://"))
    main_dir = Path(result["main_run"]["model_uri"].removeprefix("file://"))
    assert main_dir == out / "branches" / "final" / "model"
    published, branch, main = (load_file(d / "model.safetensors") for d in (out / "model", branch_dir, main_dir))
    assert all(torch.equal(published[k], branch[k]) for k in branch)
    assert not all(torch.equal(published[k], main[k]) for k in main)
    m, branch_curve = result["metrics"], result["branches"][BRANCH]["heldout_curves"][new]
    assert m["published_branch"] == BRANCH and m[f"heldout_loss_after/{new}"] == branch_curve[-1][1]
    assert m[f"final/heldout_loss_after/{new}"] == result["heldout_curves"][new][-1][1]


def test_main_run_model_is_the_average_of_the_last_k_snapshots(adapted):
    assert adapted["result"]["averaging"] == {"mode": "uniform", "ema_updates": 0, "averaged_steps": [8, 12]}


def test_adapted_model_is_saved_with_its_tokenizer(adapted):
    from transformers import LlamaForCausalLM

    from components.common.tokenizer import load_tokenizer

    model_dir = adapted["out"] / "model"
    assert LlamaForCausalLM.from_pretrained(model_dir).config.vocab_size >= len(load_tokenizer(model_dir))
    assert adapted["result"]["metrics"]["steps"] == STEPS


def _dataset_with_other_tokenizer(root: Path) -> Path:
    from components.common.artifacts import file_digest
    from components.common.shards import ShardWriter, token_dtype, write_manifest
    from components.common.tokenizer import train_tokenizer

    docs = [f"record {i}: the quick brown fox jumps over the lazy dog number {i * 7}" for i in range(200)]
    tok = train_tokenizer(docs, vocab_size=320)
    tok.save_pretrained(root / "tokenizer")
    splits = {}
    for split in ("train", "heldout"):
        writer = ShardWriter(root, split, token_dtype(len(tok)), shard_tokens=20_000)
        for d in docs:
            writer.add(tok.encode(d) + [tok.eos_token_id])
        splits[split] = writer.close()
    write_manifest(
        root,
        dtype=token_dtype(len(tok)),
        tokenizer_digest=file_digest(root / "tokenizer" / "tokenizer.json"),
        splits=splits,
    )
    return root


def test_corpora_with_different_tokenizers_are_rejected_naming_both(tmp_path, make_config, tiny_model, tiny_dataset):
    other = _dataset_with_other_tokenizer(tmp_path / "other")
    with pytest.raises(DataError) as err:
        continual(
            make_config(),
            model_uri=tiny_model.as_uri(),
            dataset_uri=other.as_uri(),
            old_dataset_uri=tiny_dataset.as_uri(),
            output_uri=(tmp_path / "out").as_uri(),
            out_dir=tmp_path / "out",
            checkpoint_uri=(tmp_path / "ckpt").as_uri(),
        )
    assert other.as_uri() in str(err.value) and tiny_dataset.as_uri() in str(err.value)
    assert not (tmp_path / "out").exists()
