"""The pretrain stage end to end on Ray Train (2 workers, one Ray shared by the module): the loss
falls, the HF model loads and generates, and a rerun after a crash resumes from the checkpoint."""

from __future__ import annotations

import json
import sys

import pytest
import ray.cloudpickle
import torch

from components.common import lineage
from components.common.config import load_config
from components.pretrain.trainer import pretrain
from components.training.callbacks import Callback
from components.training.driver import ray_session

STEPS, CHECKPOINT_EVERY, CRASH_AFTER = 20, 5, 7
EVAL_CHECKPOINTS = 4  # steps 5 (written before the crash), 10, 15, 20 (after the resume)

# The crash callback below is pickled to the Ray workers, which cannot import this test module.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class CrashAfterStep(Callback):
    """Fault injection for the test: rank 0 records each step's loss, then every rank raises."""

    def __init__(self, crash_after: int, record: str) -> None:
        self.crash_after, self.record = crash_after, record

    def post_step(self, state) -> None:
        if state.rank == 0:
            with open(self.record, "a") as f:
                f.write(json.dumps([state.step, state.last_loss]) + "\n")
        if state.step == self.crash_after:
            raise RuntimeError(f"injected crash after step {state.step}")


@pytest.fixture(scope="module")
def ray_cluster():
    with ray_session(load_config("tiny")):
        yield


@pytest.fixture(scope="module")
def crashed_then_resumed(ray_cluster, tmp_path_factory, tiny_dataset):
    """Run 1 crashes after step 7 (checkpoint at 5, no retries); run 2, a fresh call, resumes."""
    import ray.train

    root = tmp_path_factory.mktemp("pretrain")
    cfg = load_config(
        "tiny",
        [
            f"run.home={root / 'home'}",
            f"pretrain.steps={STEPS}",
            "pretrain.warmup_steps=4",
            f"pretrain.checkpoint_every={CHECKPOINT_EVERY}",
            "pretrain.log_every=4",
            "pretrain.max_failures=0",
            "pretrain.num_workers=2",
            "pretrain.batch_size=8",
            f"pretrain.eval_checkpoints={EVAL_CHECKPOINTS}",
        ],
    )
    checkpoint_uri = (root / "checkpoints").as_uri()
    record = root / "crashed_run_losses.jsonl"
    with lineage.stage_run(cfg, "pretrain") as run_id:
        with pytest.raises(ray.train.TrainingFailedError):
            pretrain(
                cfg,
                dataset_uri=tiny_dataset.as_uri(),
                output_uri=(root / "out").as_uri(),
                out_dir=root / "out",
                checkpoint_uri=checkpoint_uri,
                mlflow_run_id=run_id,
                callbacks=[CrashAfterStep(CRASH_AFTER, str(record))],
            )
        result = pretrain(
            cfg,
            dataset_uri=tiny_dataset.as_uri(),
            output_uri=(root / "out").as_uri(),
            out_dir=root / "out",
            checkpoint_uri=checkpoint_uri,
            mlflow_run_id=run_id,
        )
    crashed = [json.loads(line) for line in record.read_text().splitlines()]
    return {"cfg": cfg, "result": result, "out": root / "out", "crashed": crashed, "run_id": run_id}


def test_loss_falls(crashed_then_resumed):
    metrics = crashed_then_resumed["result"]["metrics"]
    assert metrics["final_loss"] < metrics["initial_loss"] - 0.5
    assert metrics["heldout_loss"] < metrics["initial_loss"]


def test_rerun_resumes_at_the_last_checkpoint_step(crashed_then_resumed):
    metrics = crashed_then_resumed["result"]["metrics"]
    assert metrics["resumed_from_step"] == CHECKPOINT_EVERY
    assert metrics["steps"] == STEPS
    assert [s for s, _ in crashed_then_resumed["result"]["loss_curve"]] == list(range(1, STEPS + 1))


def test_resumed_steps_repeat_the_crashed_runs_losses(crashed_then_resumed):
    crashed = dict((int(s), loss) for s, loss in crashed_then_resumed["crashed"])
    resumed = dict((int(s), loss) for s, loss in crashed_then_resumed["result"]["loss_curve"])
    assert sorted(crashed) == list(range(1, CRASH_AFTER + 1))
    for step in crashed:  # 1-5 come from the checkpoint, 6-7 were trained again after the resume
        assert resumed[step] == pytest.approx(crashed[step], rel=1e-5)


def test_model_in_out_dir_loads_and_generates(crashed_then_resumed):
    from transformers import LlamaForCausalLM

    from components.common.tokenizer import load_tokenizer

    model_dir = crashed_then_resumed["out"] / "model"
    model, tok = LlamaForCausalLM.from_pretrained(model_dir), load_tokenizer(model_dir)
    prompt = tok("ROMEO:", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 8
    assert isinstance(tok.decode(out[0]), str)


def test_loss_curve_json_and_metrics_are_written(crashed_then_resumed):
    curve = json.loads((crashed_then_resumed["out"] / "loss_curve.json").read_text())
    assert curve == crashed_then_resumed["result"]["loss_curve"]
    metrics = crashed_then_resumed["result"]["metrics"]
    assert metrics["tokens_per_second"] > 0
    assert metrics["train_tokens_seen"] == STEPS * 8 * 128 * 2
    assert metrics["parameters"] > 0


def test_every_step_loss_and_lr_are_logged_to_mlflow(crashed_then_resumed):
    import mlflow

    mlflow.set_tracking_uri(lineage.tracking_uri(crashed_then_resumed["cfg"]))
    client = mlflow.MlflowClient()
    history = client.get_metric_history(crashed_then_resumed["run_id"], "train_loss")
    assert {m.step for m in history} == set(range(1, STEPS + 1))
    logged_lr = {m.step: m.value for m in client.get_metric_history(crashed_then_resumed["run_id"], "lr")}
    assert logged_lr == pytest.approx(dict((int(s), lr) for s, lr in crashed_then_resumed["result"]["lr_curve"]))


def test_k_evenly_spaced_eval_checkpoints_are_kept_in_the_output_across_a_resume(crashed_then_resumed):
    from transformers import LlamaForCausalLM

    from components.common.storage import open_store
    from components.training.eval_checkpoints import list_eval_checkpoints

    out_uri = crashed_then_resumed["out"].as_uri()
    found = list_eval_checkpoints(open_store(out_uri), out_uri)
    assert list(found) == [5, 10, 15, 20]
    # each is a loadable model; the last one is the weights the run published
    last = LlamaForCausalLM.from_pretrained(
        crashed_then_resumed["out"] / "eval_checkpoints" / "step-00000020" / "model"
    )
    final = LlamaForCausalLM.from_pretrained(crashed_then_resumed["out"] / "model")
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), final.state_dict().values(), strict=True))
