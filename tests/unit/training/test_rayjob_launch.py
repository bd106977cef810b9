"""A training step with ``pretrain.launcher=rayjob``, end to end except KubeRay itself.

The step (``components.training.launch.train``) writes its spec to the store and creates a RayJob on
the stand-in Kubernetes API; the test plays KubeRay's submitter by running the RayJob's entrypoint for
real — ``python -m components.training.job …`` in a separate process, joining the Ray the test
started — and streams its output as the submitter pod's log. The step then reads the summary the
job's workers published. A second call of the same step (a KFP retry) finds the finished output and
creates no RayJob at all.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading

import pytest

from components.common.errors import ConfigError
from components.training.launch import spec_uri, train
from components.training.rayjob import step_rayjob_name
from components.training.spec import Probe, TrainSpec

from .conftest import NAMESPACE as NS

STEPS = 6


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from components.common.config import load_config
    from components.training.driver import ray_session

    with ray_session(load_config("tiny")):
        yield ray.get_runtime_context().gcs_address


def _spec(make_config, tiny_dataset, tmp_path) -> TrainSpec:
    cfg = make_config(
        "pretrain.launcher=rayjob",
        f"cluster.namespace={NS}",
        f"pretrain.steps={STEPS}",
        "pretrain.warmup_steps=2",
        "pretrain.checkpoint_every=3",
        "pretrain.num_workers=2",
        "pretrain.batch_size=4",
    )
    dataset = tiny_dataset.as_uri()
    return TrainSpec(
        cfg=cfg,
        stage="pretrain",
        dataset_uri=dataset,
        output_uri=(tmp_path / "models" / "0123456789abcdef").as_uri(),
        checkpoint_uri=(tmp_path / "checkpoints").as_uri(),
        steps=STEPS,
        batch_size=4,
        lr=3e-3,
        warmup_steps=2,
        min_lr_ratio=0.1,
        probes=(Probe("heldout", dataset, max_tokens=2000, batch_size=4),),
    )


def _kuberay_runs_the_entrypoint(kube, name: str, gcs_address: str, ran: dict):
    """What KubeRay's submitter does in K8sJobMode: run the entrypoint on the cluster, log it, report."""

    def play():
        kube.wait_until(lambda: kube.exists(NS, name), timeout=30)
        entrypoint = kube.rayjob(NS, name)["spec"]["entrypoint"]
        ran["entrypoint"] = entrypoint
        kube.set_status(NS, name, jobDeploymentStatus="Running", jobStatus="RUNNING")
        pod = kube.start_submitter(NS, name)
        env = {**os.environ, "RAY_ADDRESS": gcs_address}
        argv = shlex.split(entrypoint)
        argv[0] = sys.executable if argv[0] == "python" else argv[0]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        kube.write_log(NS, pod, *done.stdout.splitlines()[-5:])
        kube.finish_pod(NS, pod, "Succeeded" if done.returncode == 0 else "Failed")
        ran["returncode"], ran["stderr"] = done.returncode, done.stderr[-3000:]
        if done.returncode == 0:
            kube.set_status(NS, name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
        else:
            kube.set_status(NS, name, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed")

    return play


@pytest.fixture(scope="module")
def launched(local_ray, tiny_dataset, tmp_path_factory):
    """One rayjob-launched pretraining (module scope: it runs a Ray Train fit in a job process)."""
    from kubernetes import client

    from components.common.config import load_config

    from .kube_api import KubeAPI

    tmp = tmp_path_factory.mktemp("rayjob-launch")
    spec = _spec(lambda *o: load_config("tiny", [f"run.home={tmp / 'home'}", *o]), tiny_dataset, tmp)
    kube = KubeAPI().start()
    api = client.ApiClient(client.Configuration(host=kube.url))
    name = step_rayjob_name("pretrain", spec.output_uri)
    ran: dict = {}
    operator = threading.Thread(target=_kuberay_runs_the_entrypoint(kube, name, local_ray, ran), daemon=True)
    operator.start()
    try:
        from components.training.launch import train_on_rayjob

        summary = train_on_rayjob(spec, api_client=api)
        operator.join(30)
        journal = list(kube.journal)
        again = train_on_rayjob(spec, api_client=api)  # a KFP retry of the finished step
        journal_after_retry = list(kube.journal)
    finally:
        api.close()
        kube.stop()
    return {"spec": spec, "summary": summary, "again": again, "ran": ran, "name": name,
            "journal": journal, "journal_after_retry": journal_after_retry}  # fmt: skip


def test_the_step_creates_a_rayjob_whose_entrypoint_trains_and_publishes(launched):
    assert launched["ran"]["returncode"] == 0, launched["ran"]["stderr"]
    summary = launched["summary"]
    assert [s for s, _ in summary["loss_curve"]] == list(range(1, STEPS + 1))
    assert summary["callbacks"]["probes"]["curves"]["heldout"][-1][0] == STEPS
    assert launched["journal"][0] == ("create", launched["name"])
    assert ("delete", launched["name"]) in launched["journal"]  # nothing left behind


def test_the_entrypoint_names_the_spec_in_the_store_and_no_secret(launched):
    entrypoint = launched["ran"]["entrypoint"]
    assert shlex.split(entrypoint)[:3] == ["python", "-m", "components.training.job"]
    assert spec_uri(launched["spec"]) in entrypoint
    assert "AWS_SECRET_ACCESS_KEY" not in entrypoint and "lmforge-test" not in entrypoint


def test_a_retry_of_a_finished_step_reuses_its_output_without_a_rayjob(launched):
    assert launched["again"] == launched["summary"]
    assert launched["journal_after_retry"] == launched["journal"]


def test_rayjob_launcher_without_a_kubernetes_api_fails_naming_the_key(
    make_config, tiny_dataset, tmp_path, monkeypatch
):
    # Never a silent fallback to training inside the step: no API, a clear error.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    with pytest.raises(ConfigError, match="pretrain.launcher=rayjob needs the Kubernetes API"):
        train(_spec(make_config, tiny_dataset, tmp_path))
