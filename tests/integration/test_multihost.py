"""Training on hosts that share nothing: Ray worker nodes in their own network and mount namespaces.

The test process plays the KFP step (the Ray driver) on the bridge of a :class:`~tests.hosts.HostNetwork`
together with the Ray head and an S3 server; two worker hosts, each with its own address and a private
``/tmp``, run the Ray Train workers. The driver's working files live under its ``/tmp``, which the
workers cannot see, so pretraining and continual pretraining can only succeed if shards, the start
model, checkpoints and the trained model travel through S3. Then one worker host is partitioned (its
link cut, its processes left running, as when a node drops off the network): Ray declares it dead, a
fresh host joins (KubeRay replacing the pod), Ray Train restarts the worker group from the last
checkpoint in S3, and the run must end on exactly the loss curve of the uninterrupted run. That run
also reaches S3 through a flaky proxy (connections reset, throttled, cut half-way, delayed): every
client retries, and the model it publishes is byte-for-byte the uninterrupted run's.
"""

from __future__ import annotations

import sys
import threading
import time

import pytest
import ray.cloudpickle

from components.training.callbacks import Callback
from tests.hosts import can_make_hosts, host_network, wait_for

pytestmark = pytest.mark.skipif(bool(can_make_hosts()), reason=can_make_hosts() or "hosts available")

BUCKET = "lmforge-hosts"
STEPS, CHECKPOINT_EVERY, PARTITION_AFTER = 8, 4, 6

# The pause callback below travels to the Ray workers, which cannot import this test module.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class PauseOnce(Callback):
    """Hold every rank after step ``step`` until the test says go (once per run), so the partition
    lands at a known step: after the checkpoint of step 4, before the run ends. The marker objects
    live in S3, the one thing driver and workers share."""

    def __init__(self, step: int, marker_uri: str, store_options: dict) -> None:
        self.step, self.marker_uri, self.store_options = step, marker_uri, store_options

    def post_step(self, state) -> None:
        from components.common.storage import join, open_store

        if state.step != self.step:
            return
        store = open_store(self.marker_uri, **self.store_options)
        go = join(self.marker_uri, "go")
        if store.exists(go):  # the replay after the recovery passes straight through
            return
        store.write_text(join(self.marker_uri, f"paused-{state.rank}"), str(state.step))
        deadline = time.monotonic() + 120
        while not store.exists(go) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def net():
    with host_network() as network:
        yield network


@pytest.fixture(scope="module")
def s3(net):
    """moto's S3 server on the bridge address: reachable from every host, like MinIO from every pod."""
    import os

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=net.gateway, port=0, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "lmforge-test", "AWS_SECRET_ACCESS_KEY": "lmforge-test"})
    host, port = server._server.server_address
    yield f"{host}:{port}"
    server.stop()
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def cluster(net, s3):
    from tests.ray_hosts import ray_on_hosts

    with ray_on_hosts(net, workers=("w1", "w2")) as hosts:
        yield hosts


@pytest.fixture(scope="module")
def uploaded(s3, tiny_dataset, wikitext_dataset) -> dict[str, str]:
    """The two curated corpora, in S3 only as far as the workers are concerned."""
    from components.common.storage import open_store

    store = open_store("s3://x", s3_endpoint=s3, s3_secure=False)
    uris = {"tiny": f"s3://{BUCKET}/datasets/tiny", "wiki": f"s3://{BUCKET}/datasets/wiki"}
    store.upload_dir(tiny_dataset, uris["tiny"])
    store.upload_dir(wikitext_dataset, uris["wiki"])
    return uris


def _config(tmp_path, s3: str, *overrides: str):
    from components.common.config import load_config

    return load_config(
        "tiny",
        [
            f"run.home={tmp_path / 'home'}",
            f"storage.uri=s3://{BUCKET}",
            f"storage.s3_endpoint={s3}",
            "storage.s3_secure=false",
            f"pretrain.steps={STEPS}",
            "pretrain.warmup_steps=2",
            f"pretrain.checkpoint_every={CHECKPOINT_EVERY}",
            "pretrain.max_failures=3",
            "pretrain.num_workers=2",
            "pretrain.batch_size=4",
            "continual.steps=6",
            "continual.warmup_steps=2",
            "continual.probe_every=3",
            "continual.probe_density=1",  # probes at 0, 3, 6 only
            "evaluate.heldout_max_tokens=4000",
            *overrides,
        ],
    )


def _pretrain(cfg, uploaded: dict, tmp_path, name: str, callbacks=()) -> dict:
    from components.pretrain.trainer import pretrain

    return pretrain(
        cfg,
        dataset_uri=uploaded["tiny"],
        output_uri=f"s3://{BUCKET}/models/{name}",
        out_dir=tmp_path / name,
        checkpoint_uri=f"s3://{BUCKET}/checkpoints/{name}",
        callbacks=callbacks,
    )


@pytest.fixture(scope="module")
def pretrained(cluster, s3, uploaded, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("pretrain-hosts")
    result = _pretrain(_config(tmp, s3), uploaded, tmp, "clean")
    return {"result": result, "tmp": tmp}


@pytest.fixture(scope="module")
def adapted(pretrained, s3, uploaded, tmp_path_factory) -> dict:
    from components.continual.run import continual

    tmp = tmp_path_factory.mktemp("continual-hosts")
    return continual(
        _config(tmp, s3, "continual.replay_fraction=0.25"),
        model_uri=f"s3://{BUCKET}/models/clean/model",
        dataset_uri=uploaded["wiki"],
        old_dataset_uri=uploaded["tiny"],
        output_uri=f"s3://{BUCKET}/models/adapted",
        out_dir=tmp / "out",
        checkpoint_uri=f"s3://{BUCKET}/checkpoints/adapted",
    )


@pytest.fixture(scope="module")
def partitioned(pretrained, cluster, net, s3, uploaded, tmp_path_factory) -> dict:
    """The same pretraining again; after step 6 (checkpoint 4 is in S3) host w2 is cut off the network."""
    from components.common.artifacts import store_options
    from components.common.storage import open_store
    from tests.flaky_proxy import flaky_proxy

    tmp = tmp_path_factory.mktemp("pretrain-partitioned")
    proxy_cm = flaky_proxy(
        s3, drop_every=11, throttle_every=13, cut_every=17, cut_after=300, delay_every=9, delay_seconds=0.05,
        host=net.gateway,
    )  # fmt: skip
    proxy = proxy_cm.__enter__()
    cfg = _config(tmp, proxy.address, "storage.s3_backoff_seconds=0.05")  # the test's faults are brief
    store = open_store("s3://x", s3_endpoint=s3, s3_secure=False)
    markers = f"s3://{BUCKET}/markers/partitioned"
    pause = PauseOnce(PARTITION_AFTER, markers, store_options(cfg))
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = _pretrain(cfg, uploaded, tmp, "partitioned", callbacks=(pause,))
        except BaseException as e:  # re-raised on the test's thread
            outcome["error"] = e

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    wait_for(lambda: len(store.list(markers)) == 2, timeout=180, what=f"both ranks to finish step {PARTITION_AFTER}")
    w2 = net.hosts["w2"]
    cut_at = time.monotonic()
    net.cut(w2)
    store.write_text(f"{markers}/go", "partitioned")  # w1 runs on into the next all-reduce and hangs there
    wait_for(lambda: not cluster.node_of(w2)["Alive"], timeout=60, what="Ray to declare the partitioned node dead")
    declared_dead = time.monotonic() - cut_at
    cluster.add_worker("w3")  # KubeRay replaces the lost pod
    trainer.join(timeout=300)
    proxy_cm.__exit__(None, None, None)
    assert not trainer.is_alive(), "training did not finish after the replacement node joined"
    if "error" in outcome:
        raise outcome["error"]
    recovered = time.monotonic() - cut_at
    net.heal(w2)  # the old node comes back to a cluster that has declared it dead
    time.sleep(1.0)
    old_node_alive = cluster.node_of(w2)["Alive"]
    net.remove(w2)
    return {
        "result": outcome["result"],
        "declared_dead_seconds": declared_dead,
        "recovery_seconds": recovered,
        "old_node_alive_after_heal": old_node_alive,
        "w2_netns": w2.netns,
        "proxy": proxy.counts,
    }


def test_worker_hosts_cannot_open_the_drivers_files(cluster, tiny_dataset, s3, uploaded):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=1)
    def look(path: str, uri: str, endpoint: str) -> tuple[bool, bool]:
        import os

        from components.common.storage import open_store

        return os.path.exists(path), open_store(uri, s3_endpoint=endpoint, s3_secure=False).exists(uri)

    manifest = tiny_dataset / "manifest.json"
    for node in cluster.alive():
        if node["Resources"].get("CPU"):
            affinity = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            sees_file, sees_object = ray.get(
                look.options(scheduling_strategy=affinity).remote(
                    str(manifest), f"{uploaded['tiny']}/manifest.json", s3
                )
            )
            assert manifest.exists() and not sees_file  # the driver's path is not there on a worker host
            assert sees_object  # the same bytes through S3 are


def test_pretraining_on_separate_hosts_trains_and_publishes_through_s3(pretrained, s3):
    from components.common.storage import open_store

    metrics = pretrained["result"]["metrics"]
    assert metrics["final_loss"] < metrics["initial_loss"]
    store = open_store("s3://x", s3_endpoint=s3, s3_secure=False)
    model = store.list(f"s3://{BUCKET}/models/clean/model")
    assert any(uri.endswith(".safetensors") for uri in model) and any(uri.endswith("tokenizer.json") for uri in model)
    assert store.list(f"s3://{BUCKET}/checkpoints/clean/pretrain/checkpoint-{STEPS:08d}")
    # the driver kept only the curve it publishes itself: no model, no checkpoint on its disk
    assert sorted(p.name for p in (pretrained["tmp"] / "clean").iterdir()) == ["loss_curve.json"]


def test_continual_on_separate_hosts_starts_from_the_model_in_s3(adapted, s3):
    from components.common.storage import open_store

    m = adapted["metrics"]
    assert m["new_heldout_loss_after"] < m["new_heldout_loss_before"]
    assert [s for s, _ in adapted["old_heldout_curve"]] == [0, 3, 6]
    store = open_store("s3://x", s3_endpoint=s3, s3_secure=False)
    assert store.exists(f"s3://{BUCKET}/models/adapted/model/config.json")


def test_partitioned_run_ends_on_the_uninterrupted_loss_curve(pretrained, partitioned):
    clean = pretrained["result"]["loss_curve"]
    assert partitioned["result"]["loss_curve"] == clean  # bitwise: same floats at every step
    assert partitioned["result"]["metrics"]["resumed_from_step"] == CHECKPOINT_EVERY
    print(
        f"\n[multihost] partition declared dead after {partitioned['declared_dead_seconds']:.1f}s; "
        f"run finished {partitioned['recovery_seconds']:.1f}s after the cut"
    )


def test_flaky_s3_is_retried_and_the_published_model_is_byte_identical(partitioned, s3):
    from components.common.storage import open_store

    counts = partitioned["proxy"]
    assert counts.dropped and counts.throttled and counts.cut and counts.delayed  # every fault struck
    store = open_store("s3://x", s3_endpoint=s3, s3_secure=False)
    weights = [f"s3://{BUCKET}/models/{run}/model/model.safetensors" for run in ("clean", "partitioned")]
    assert store.read_bytes(weights[0]) == store.read_bytes(weights[1])


def test_healed_partition_stays_out_and_its_namespace_is_gone(partitioned):
    import subprocess

    assert partitioned["old_node_alive_after_heal"] is False
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert partitioned["w2_netns"] not in namespaces
