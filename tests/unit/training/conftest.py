"""Fixtures of the RayJob tests: a RayJob built for the tiny profile."""

from __future__ import annotations

import pytest

NAMESPACE = "lmforge-test"
DIGEST = "0f1e2d3c4b5a6978"


@pytest.fixture
def rayjob(make_config):
    """``rayjob("cluster.x=y", ...)``: the RayJob the builder makes for the tiny profile with those overrides."""
    from components.training.rayjob import build_rayjob, rayjob_name

    def build(*overrides: str, namespace: str = NAMESPACE) -> dict:
        return build_rayjob(
            make_config(*overrides),
            name=rayjob_name("pretrain", DIGEST),
            namespace=namespace,
            entrypoint="python -m components.training.job --spec s3://lmforge/jobs/spec.json",
            image="ghcr.io/lmforge/lmforge:test-cpu",
            gpu_image="ghcr.io/lmforge/lmforge:test-cuda",
        )

    return build
