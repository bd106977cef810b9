"""Placement of steps from the compile profile's config (pipelines/graph.py) and what compiling does with it."""

import pytest
from google.protobuf import json_format

from components.common.config import load_config
from components.common.errors import ConfigError
from pipelines.compile import build_pipeline, compile_all
from pipelines.graph import DRIVER_MEMORY, MEMORY, PRESETS, Placement
from tests.unit.pipelines.conftest import steps_of

ONE_B = ("1b+cluster", "cluster.node_selector={gpu.pool: a100}", "cluster.step_memory={quantize: 40Gi}")


def _steps(compiled: dict, pipeline: str = "lifecycle") -> dict:
    return {s.step: s for s in compiled[pipeline][1]}


def test_memory_follows_the_model_size_of_the_profile():
    assert Placement(load_config("1b+cluster")).memory("align") == MEMORY["align"][PRESETS.index("1b")]


def test_step_memory_overrides_the_size_default(compiled_for):
    assert _steps(compiled_for(*ONE_B))["quantize"].container["resources"]["resourceMemoryLimit"] == "40Gi"


def test_training_inside_its_own_pod_gets_model_memory():
    cfg = load_config("small+cluster", ["pretrain.launcher=ray", "pretrain.ray_address=local"])
    assert Placement(cfg).memory("pretrain") == MEMORY["pretrain"][PRESETS.index("small")]


def test_training_that_drives_a_remote_ray_gets_driver_memory():
    cfg = load_config("1b+cluster", ["pretrain.launcher=ray", "pretrain.ray_address=ray://head:10001"])
    assert Placement(cfg).memory("continual") == DRIVER_MEMORY


def test_node_selector_reaches_gpu_steps_only(compiled_for):
    selected = {step for step, s in _steps(compiled_for(*ONE_B)).items() if s.pod.get("nodeSelector")}
    assert selected == {"align", "prefer", "quantize", "evaluate"}


def test_node_selector_labels_come_from_config(compiled_for):
    assert _steps(compiled_for(*ONE_B))["align"].pod["nodeSelector"] == {"labels": {"gpu.pool": "a100"}}


def test_compile_profile_and_overrides_become_the_parameter_defaults(compiled_for):
    spec, _ = compiled_for(*ONE_B)["continual"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert (params["profile"]["defaultValue"], params["overrides"]["defaultValue"]) == (ONE_B[0], list(ONE_B[1:]))


def test_compile_refuses_a_profile_whose_steps_would_share_a_local_store(tmp_path):
    with pytest.raises(ConfigError, match=r"profile 'tiny' cannot run as a compiled pipeline.*storage\.uri"):
        compile_all(tmp_path, "tiny")


def test_local_graph_without_the_cluster_overlay_never_retries():
    pipeline = build_pipeline("lifecycle", load_config("tiny"))
    tasks = json_format.MessageToDict(pipeline.pipeline_spec)["root"]["dag"]["tasks"]
    assert [name for name, task in tasks.items() if "retryPolicy" in task] == []


def test_local_graph_still_keeps_resolve_champion_out_of_the_cache():
    pipeline = build_pipeline("continual", load_config("tiny"))
    spec = json_format.MessageToDict(pipeline.pipeline_spec)
    (champion,) = [s for s in steps_of(spec, {}) if s.step == "resolve_champion"]
    assert not champion.spec.get("cachingOptions", {}).get("enableCache", False)


def test_unknown_gpu_step_is_named_with_the_known_steps():
    with pytest.raises(ConfigError, match=r"cluster.gpu_steps: unknown step\(s\) algn; steps are start_lineage"):
        Placement(load_config("small+cluster", ["cluster.gpu_steps=align,algn"]))


def test_unknown_step_in_step_memory_is_named():
    with pytest.raises(ConfigError, match=r"cluster.step_memory: unknown step\(s\) train"):
        Placement(load_config("small+cluster", ["cluster.step_memory={train: 8Gi}"]))


def test_memory_that_is_not_a_quantity_names_the_key():
    with pytest.raises(ConfigError, match=r"cluster.step_memory.align: 'lots' is not a Kubernetes quantity"):
        build_pipeline("lifecycle", load_config("small+cluster", ["cluster.step_memory={align: lots}"]))


def test_toleration_with_unknown_fields_is_named():
    with pytest.raises(ConfigError, match=r"cluster.tolerations: .* is not a toleration"):
        Placement(load_config("small+cluster", ["cluster.tolerations=[{taint: gpu}]"]))


def test_mlflow_client_credentials_reach_every_step_from_their_secret(compiled_for):
    steps = _steps(compiled_for("small+cluster", "cluster.mlflow_secret=lmforge-mlflow-client"))
    for step in steps.values():
        by_secret = {s["secretName"]: {m["envVar"] for m in s["keyToEnv"]} for s in step.pod["secretAsEnv"]}
        assert by_secret["lmforge-mlflow-client"] == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
