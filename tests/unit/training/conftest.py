"""Fixtures of the RayJob tests: a stand-in Kubernetes API server on 127.0.0.1 with a real `kubernetes`
client bound to it, the operator's side played in a thread, and a RayJob built for the tiny profile."""

from __future__ import annotations

import threading

import pytest

NAMESPACE = "lmforge-test"
DIGEST = "0f1e2d3c4b5a6978"


@pytest.fixture
def kube():
    from .kube_api import KubeAPI

    server = KubeAPI().start()
    yield server
    server.stop()


@pytest.fixture
def api_client(kube):
    from kubernetes import client

    api = client.ApiClient(client.Configuration(host=kube.url))
    yield api
    api.close()


@pytest.fixture
def operator():
    """``operator(script)`` runs ``script()`` in a thread beside the launcher, as KubeRay would act; a
    script that raised fails the test."""
    threads, errors = [], []

    def run(script):
        def body():
            try:
                script()
            except BaseException as e:  # reported at teardown, where pytest shows it
                errors.append(e)

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        threads.append(thread)

    yield run
    for thread in threads:
        thread.join(10)
    if errors:
        raise errors[0]


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


@pytest.fixture
def step_log():
    """The lines the launcher passes to the step's log."""
    return []


@pytest.fixture
def launch(api_client, step_log):
    """``launch(manifest, **options)``: run_rayjob against the stand-in, with waits scaled for tests."""
    from components.training.kube_launcher import run_rayjob

    def run(manifest, **options):
        settings = dict(api_client=api_client, log=step_log.append, timeout_seconds=20, watch_seconds=5,
                        poll_seconds=0.02, log_drain_seconds=5, api_attempts=3)  # fmt: skip
        return run_rayjob(manifest, **{**settings, **options})

    return run
