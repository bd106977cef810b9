"""A TrainSpec is plain values and store URIs: it survives JSON (the RayJob path) unchanged."""

from __future__ import annotations

import pytest

from components.common.errors import ConfigError
from components.training.callbacks import Callback
from components.training.spec import Probe, TrainSpec, probe_points


def _spec(make_config, **kw) -> TrainSpec:
    return TrainSpec(
        cfg=make_config("pretrain.steps=30", "cluster.node_selector={pool: gpu}"),
        stage="pretrain",
        dataset_uri="s3://bucket/datasets/abc",
        output_uri="s3://bucket/models/def",
        checkpoint_uri="s3://bucket/checkpoints/def",
        steps=30,
        batch_size=8,
        lr=1e-3,
        warmup_steps=3,
        min_lr_ratio=0.1,
        probes=(Probe("heldout", "s3://bucket/datasets/abc", every=10, at_start=True),),
        plugins=("components.resilience.driver:training_callbacks",),
        **kw,
    )


def test_spec_round_trips_through_json(make_config):
    spec = _spec(make_config)
    assert TrainSpec.from_json(spec.to_json()) == spec


def test_spec_with_in_process_callbacks_refuses_json_naming_them(make_config):
    class Recorder(Callback):
        pass

    with pytest.raises(ConfigError, match="Recorder.*pretrain.launcher=ray"):
        _spec(make_config, callbacks=(Recorder(),)).to_json()


def test_tokenizer_and_summary_live_under_the_dataset_and_output_uris(make_config):
    spec = _spec(make_config)
    assert spec.tokenizer_uri == "s3://bucket/datasets/abc/tokenizer"
    assert spec.summary_uri == "s3://bucket/models/def/training_summary.json"


def test_probe_measures_every_n_steps_and_always_at_the_last():
    probe = Probe("p", "file:///d", every=4)
    assert [s for s in range(1, 11) if probe_points(probe, s, 10)] == [4, 8, 10]
    assert [s for s in range(1, 11) if probe_points(Probe("q", "file:///d"), s, 10)] == [10]


def test_a_checkpoint_in_random_order_does_not_resume_a_quality_ordered_run(make_config):
    assert _spec(make_config).resume_key(2) != _spec(make_config, order="quality").resume_key(2)
