"""Reading compiled KFP IR by lmforge step: each task's step name, task spec, container and pod settings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

COMPILED = Path(__file__).resolve().parents[3] / "pipelines" / "compiled"
PIPELINE_NAMES = ("lifecycle", "continual")


@dataclass(frozen=True)
class Step:
    """One task of a compiled pipeline, seen as the lmforge step it runs (pipelines/graph.py names)."""

    task: str
    step: str
    spec: dict  # the DAG task: cachingOptions, retryPolicy
    container: dict  # deploymentSpec executor: image, resources, env
    pod: dict  # kubernetes platform executor config: secretAsEnv, tolerations, nodeSelector


def steps_of(spec: dict, platform: dict) -> list[Step]:
    executors = spec["deploymentSpec"]["executors"]
    pods = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {}
    out = []
    for task, task_spec in spec["root"]["dag"]["tasks"].items():
        component = task_spec["componentRef"]["name"]
        label = spec["components"][component]["executorLabel"]
        # comp-resolve-champion-2 -> resolve_champion (KFP suffixes a component reused with other settings)
        step = re.sub(r"-\d+$", "", component.removeprefix("comp-")).replace("-", "_")
        out.append(Step(task, step, task_spec, executors[label]["container"], pods.get(label, {})))
    return out


def read_compiled(path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform


@pytest.fixture(params=PIPELINE_NAMES)
def committed(request) -> tuple[dict, list[Step]]:
    """(IR spec, steps) of a committed pipeline in pipelines/compiled/, once per pipeline."""
    spec, platform = read_compiled(COMPILED / f"{request.param}.yaml")
    return spec, steps_of(spec, platform)


@pytest.fixture(scope="session")
def compiled_for(tmp_path_factory):
    """``compiled_for(profile, *overrides)`` → {pipeline: (spec, steps)} as ``lmforge compile`` writes them."""
    from pipelines.compile import compile_all

    cache: dict = {}

    def compile_(profile: str, *overrides: str) -> dict:
        key = (profile, overrides)
        if key not in cache:
            out = tmp_path_factory.mktemp("compiled")
            cache[key] = {}
            for path in compile_all(out, profile, list(overrides)):
                spec, platform = read_compiled(path)
                cache[key][path.stem] = (spec, steps_of(spec, platform))
        return cache[key]

    return compile_
