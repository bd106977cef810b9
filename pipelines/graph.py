"""Pieces of graph both pipelines share: placing a step on the cluster, opening the run, and
adapt → align → … → report.

``lifecycle`` and ``continual`` differ only in where the base model and the old corpus come from
(pretraining vs. the registry champion); from continual pretraining on they are the same chain, so
that chain is built here once.

**Placement is decided when compiling**, from the config of the profile the pipeline is compiled
with (``lmforge compile --profile small+cluster``), because KFP fixes a pod's image, resources,
tolerations and retry policy in the IR: a run's ``profile`` parameter cannot change them. Per step:

- resources: CPU from :data:`CPU`, memory from :data:`MEMORY` for the run's ``model.preset`` unless
  ``cluster.step_memory`` names the step; training steps that only drive a RayJob (or a RayCluster
  over Ray Client) need :data:`DRIVER_MEMORY` whatever the model size;
- GPU steps (``cluster.gpu_steps``): the CUDA image, ``cluster.gpus_per_worker_pod`` of
  ``cluster.gpu_resource``, ``cluster.tolerations`` and ``cluster.node_selector``;
- retries (``cluster.step_retries``) only on the :data:`RETRIED` steps, within
  ``cluster.step_retry_window_hours``: Argo counts that window from the step's first start and makes
  it every attempt's pod deadline too, so KFP's default of one hour would kill a long training step;
- KFP's cache off on :data:`UNCACHED` steps, whose result depends on registry or tracking state that
  changes between runs with identical inputs (KFP would otherwise replay the first run's answer,
  e.g. the first champion to every later retrain). Every other step takes the MLflow parent run id
  as an input, new in every run, so KFP's cache cannot hit for them anyway; the object store's
  content addressing is what skips unchanged work (components/common/stage.py);
- training steps: the images their RayJobs run (``LMFORGE_RAY_IMAGE``/``LMFORGE_RAY_GPU_IMAGE``), the
  ones compiled into this pipeline, so a pipeline pinned by digest pins its Ray pods too;
- every step: non-root, the ``app.kubernetes.io/part-of`` label and the S3 keys from the Secret
  ``cluster.s3_secret`` (required: a missing Secret stops the pod at start, naming it, instead of
  failing at the first S3 call).

Under ``kfp.local`` images, resources and Kubernetes settings are ignored; retries are honoured,
which is why ``cluster.step_retries`` is 0 unless the ``cluster`` overlay sets it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kfp import dsl, kubernetes

from components.align.component import align, prefer
from components.common.config import LifecycleConfig
from components.common.errors import ConfigError
from components.common.images import CUDA_IMAGE, IMAGE, RAY_GPU_IMAGE_ENV, RAY_IMAGE_ENV
from components.continual.component import continual
from components.evaluate.component import evaluate
from components.lineage.component import start_lineage
from components.quantize.component import quantize
from components.register.component import register
from components.report.component import report

CPU = {
    "start_lineage": "500m",
    "resolve_champion": "500m",
    "curate": "2",
    "pretrain": "1",
    "continual": "1",
    "align": "4",
    "prefer": "4",
    "quantize": "4",
    "evaluate": "4",
    "register": "500m",
    "report": "1",
}
STEPS = tuple(CPU)

# Memory request (= limit) by model.preset. align holds the model, its gradients and AdamW state
# (16 bytes/parameter in fp32, plus DPO's reference model); quantize and evaluate hold a full-
# precision copy next to the quantized one; curate trains the BPE tokenizer on a corpus sample.
# pretrain/continual rows apply when they train inside their own pod (pretrain.launcher=ray on
# pretrain.ray_address=local); driving a RayJob or a RayCluster needs only DRIVER_MEMORY.
PRESETS = ("tiny", "mini", "small", "1b")
MEMORY = {
    "start_lineage": ("1Gi", "1Gi", "1Gi", "1Gi"),
    "resolve_champion": ("1Gi", "1Gi", "1Gi", "1Gi"),
    "curate": ("4Gi", "4Gi", "8Gi", "32Gi"),
    "pretrain": ("4Gi", "8Gi", "16Gi", "64Gi"),
    "continual": ("4Gi", "8Gi", "16Gi", "64Gi"),
    "align": ("4Gi", "8Gi", "16Gi", "64Gi"),
    "prefer": ("4Gi", "8Gi", "24Gi", "96Gi"),  # DPO holds a frozen reference model beside the policy
    "quantize": ("2Gi", "4Gi", "8Gi", "24Gi"),
    "evaluate": ("4Gi", "4Gi", "8Gi", "24Gi"),
    "register": ("2Gi", "2Gi", "2Gi", "2Gi"),
    "report": ("2Gi", "2Gi", "2Gi", "2Gi"),
}
DRIVER_MEMORY = "2Gi"
TRAINING_STEPS = ("pretrain", "continual")

#: Steps a KFP retry may re-run: each writes a content-addressed output and marks it complete last,
#: so a retry reuses the completed output or redoes it whole (a training step re-attaches to its
#: RayJob); resolve_champion only reads; report overwrites the same report and tags. Not retried:
#: start_lineage (a retry would leave a second parent run RUNNING) and register (a retry after the
#: registry write could register a second version and move the champion alias twice).
RETRIED = frozenset(
    {"resolve_champion", "curate", "pretrain", "continual", "align", "prefer", "quantize", "evaluate", "report"}
)

#: Steps never served from KFP's cache: they read or write registry/tracking state (evaluate reads
#: the champion its verdict is about; its own content address includes the champion, so an
#: unchanged evaluation against an unchanged champion is still reused by run_stage).
UNCACHED = frozenset({"start_lineage", "resolve_champion", "evaluate", "register", "report"})

RETRY_BACKOFF = "60s"  # first retry after a minute (a rescheduled pod needs a node), then 2x, 4x ...
TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
#: Keys of cluster.mlflow_secret -> the env MLflow's client reads for basic auth.
MLFLOW_AUTH_ENV = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}


@dataclass(frozen=True)
class Placement:
    """How each step's pod is placed on the cluster, from the config a pipeline is compiled with."""

    cfg: LifecycleConfig

    def __post_init__(self) -> None:
        c = self.cfg.cluster
        _known_steps("cluster.gpu_steps", c.gpu_steps)
        _known_steps("cluster.step_memory", c.step_memory)
        if self.cfg.model.preset not in PRESETS:
            raise ConfigError(
                f"model.preset: no step memory for {self.cfg.model.preset!r}; choose one of {', '.join(PRESETS)}"
            )
        if not c.s3_secret:
            raise ConfigError("cluster.s3_secret: name the Secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        for t in c.tolerations:
            if not isinstance(t, dict) or not set(t) <= TOLERATION_KEYS:
                raise ConfigError(
                    f"cluster.tolerations: {t!r} is not a toleration; use the keys {sorted(TOLERATION_KEYS)}, "
                    "e.g. {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}"
                )

    def memory(self, step: str) -> str:
        if step in self.cfg.cluster.step_memory:
            return str(self.cfg.cluster.step_memory[step])
        if step in TRAINING_STEPS and not self.trains_in_pod:
            return DRIVER_MEMORY
        return MEMORY[step][PRESETS.index(self.cfg.model.preset)]

    @property
    def trains_in_pod(self) -> bool:
        p = self.cfg.pretrain
        return p.launcher == "ray" and p.ray_address == "local"

    def __call__(self, task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
        """Apply this step's image, resources, scheduling, retry, caching and credentials to ``task``."""
        c = self.cfg.cluster
        memory = self.memory(step)
        try:
            task.set_cpu_request(CPU[step]).set_memory_request(memory).set_memory_limit(memory)
        except ValueError as e:
            raise ConfigError(f"cluster.step_memory.{step}: {memory!r} is not a Kubernetes quantity ({e})") from e
        if step in c.gpu_steps:
            task.set_container_image(c.gpu_image or CUDA_IMAGE)
            task.set_accelerator_type(c.gpu_resource).set_accelerator_limit(c.gpus_per_worker_pod)
            for t in c.tolerations:
                kubernetes.add_toleration(
                    task,
                    key=t.get("key"),
                    operator=t.get("operator"),
                    value=t.get("value"),
                    effect=t.get("effect"),
                    toleration_seconds=t.get("tolerationSeconds"),
                )
            for label, value in c.node_selector.items():
                kubernetes.add_node_selector(task, label, str(value))
        if step in TRAINING_STEPS:
            task.set_env_variable(RAY_IMAGE_ENV, c.image or IMAGE)
            task.set_env_variable(RAY_GPU_IMAGE_ENV, c.gpu_image or CUDA_IMAGE)
        if step in RETRIED and c.step_retries:
            task.set_retry(
                c.step_retries,
                backoff_duration=RETRY_BACKOFF,
                backoff_factor=2.0,
                backoff_max_duration=f"{c.step_retry_window_hours}h",
            )
        if step in UNCACHED:
            task.set_caching_options(False)
        kubernetes.set_security_context(task, run_as_user=1000, run_as_group=1000, run_as_non_root=True)
        kubernetes.use_secret_as_env(task, secret_name=c.s3_secret, secret_key_to_env={k: k for k in S3_KEYS})
        if c.mlflow_secret:
            kubernetes.use_secret_as_env(task, secret_name=c.mlflow_secret, secret_key_to_env=MLFLOW_AUTH_ENV)
        kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "lmforge")
        return task


def _known_steps(key: str, names) -> None:
    unknown = sorted(set(names) - set(STEPS))
    if unknown:
        raise ConfigError(f"{key}: unknown step(s) {', '.join(unknown)}; steps are {', '.join(STEPS)}")


def open_run(profile, overrides, pipeline: str, place: Placement) -> dict:
    """Start the MLflow parent run; returns the arguments every later step takes."""
    start = start_lineage(
        profile=profile, overrides=overrides, pipeline=pipeline, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER
    )
    place(start.set_display_name("start lineage"), "start_lineage")
    return {"profile": profile, "overrides": overrides, "lineage_run_id": start.output}


def adapt_and_release(run: dict, place: Placement, *, base_model, old_data, new_data, pretrained=None) -> None:
    """continual → align (sft) → prefer → quantize → evaluate → register → report, each placed for the cluster."""
    adapted = continual(**run, base_model=base_model, dataset=new_data, old_dataset=old_data)
    chat = align(**run, base_model=adapted.outputs["model"]).set_display_name("sft")
    preferred = prefer(**run, sft_model=chat.outputs["model"]).set_display_name("preference")
    small = quantize(**run, base_model=preferred.outputs["model"], dataset=old_data)
    optional = {"pretrained": pretrained} if pretrained is not None else {}  # KFP rejects an explicit None
    scores = evaluate(
        **run,
        model=small.outputs["model"],
        adapted=adapted.outputs["model"],
        dataset=old_data,
        new_dataset=new_data,
        **optional,
    )
    registered = register(
        **run,
        model=small.outputs["model"],
        evaluation=scores.outputs["results"],
        dataset=old_data,
        new_dataset=new_data,
        base_model=adapted.outputs["model"],
    )
    final = report(
        **run,
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        dataset=old_data,
        new_dataset=new_data,
        adapted=adapted.outputs["model"],
        aligned=chat.outputs["model"],
        preferred=preferred.outputs["model"],
        quantized=small.outputs["model"],
        evaluation=scores.outputs["results"],
        registration=registered.outputs["registration"],
        **optional,
    )
    for task, step in (
        (adapted, "continual"),
        (chat, "align"),
        (preferred, "prefer"),
        (small, "quantize"),
        (scores, "evaluate"),
        (registered, "register"),
        (final, "report"),
    ):
        place(task, step)
