"""One typed configuration tree for the whole lifecycle.

A run's configuration is a frozen :class:`LifecycleConfig` built from YAML profiles
(``pipelines/profiles/<name>.yaml``, values only) and ``key=value`` overrides (``--set`` on the CLI,
the ``overrides`` parameter of a pipeline). A profile string may join several profiles with ``+``,
merged left to right: the size profiles (``tiny``, ``small``, ``1b``) say how big a run is, the
``cluster`` overlay says where it runs (``small+cluster``), so neither repeats the other.

Every field is declared with :func:`knob`, which keeps its documentation next to it (``lmforge
config`` prints them) and says whether the field changes a stage's result: only *versioned* fields
enter the content hash that addresses a stage's output, so changing a log interval never forces a
rerun (see :mod:`components.common.artifacts`).

Errors name the key path and the fix, e.g. ``unknown key 'pretrain.stepz' (did you mean 'steps'?)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from components.common.errors import ConfigError

PROFILES_DIR = Path(__file__).resolve().parents[2] / "pipelines" / "profiles"
#: Joins profiles applied left to right, e.g. ``small+cluster`` (a size, then the cluster overlay).
PROFILE_SEPARATOR = "+"
#: LR schedules and WSD decay shapes (``components/training/schedule.py`` implements them).
SCHEDULES = ("cosine", "wsd", "constant", "inverse_sqrt")
DECAY_SHAPES = ("linear", "sqrt", "cosine")
#: Weight averaging in place of (or beside) the final decay (``components/training/averaging.py``).
AVERAGES = ("none", "ema", "uniform", "weighted")


def knob(default: Any, doc: str, *, versioned: bool = True) -> Any:
    """Declare a config field with its documentation.

    Args:
        default: the value used when neither the profile nor an override sets it.
        doc: one line: meaning, unit and why this default.
        versioned: whether the field changes the stage's output (and so its content hash).
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, "versioned": versioned})
    return field(default=default, metadata={"doc": doc, "versioned": versioned})


def section(cls: type, doc: str) -> Any:
    """Declare a nested config section."""
    return field(default_factory=cls, metadata={"doc": doc, "versioned": True})


_frozen = dataclass(frozen=True, kw_only=True)

#: The preference step's methods (``align.method``).
ALIGN_METHODS = ("none", "dpo", "online_dpo", "expert_iteration")
#: Online DPO's judges (``align.judge``).
JUDGES = ("verifier", "reward_model")


@_frozen
class RunConfig:
    profile: str = knob(
        "tiny",
        "The profile string this config was loaded from, overlays included (e.g. small+cluster).",
        versioned=False,
    )
    seed: int = knob(1234, "Seed for every random choice (splits, init, data order).")
    home: str = knob(".lmforge", "Local working directory: store, MLflow database, KFP outputs.", versioned=False)


@_frozen
class StorageConfig:
    uri: str = knob("", "Object-store root: '' = file://<run.home>/store, or s3://bucket[/prefix].", versioned=False)
    s3_endpoint: str = knob("", "S3/MinIO endpoint host:port for s3:// URIs ('' = AWS).", versioned=False)
    s3_secure: bool = knob(True, "Use TLS to reach the S3 endpoint.", versioned=False)
    s3_region: str = knob("us-east-1", "Region sent to the S3 endpoint.", versioned=False)
    s3_max_attempts: int = knob(
        6,
        "Attempts per S3 request before a transient error (connection reset, 5xx, throttling) fails the step; "
        "1 = no retry.",
        versioned=False,
    )
    s3_backoff_seconds: float = knob(
        0.5, "Delay before the first S3 retry; doubles with each retry (with jitter), capped at 20 s.", versioned=False
    )
    s3_timeout_seconds: float = knob(
        60.0,
        "Longest silence on an S3 connection (read timeout; connect timeout: at most 10 s) before the attempt "
        "counts as failed and is retried.",
        versioned=False,
    )


@_frozen
class LineageConfig:
    tracking_uri: str = knob("", "MLflow tracking URI: '' = sqlite:///<run.home>/mlflow.db.", versioned=False)
    experiment: str = knob("lmforge", "MLflow experiment that holds the pipeline runs.", versioned=False)
    ui_url: str = knob(
        "",
        "Base URL of the MLflow UI that the report, `lmforge show` and `lmforge lineage` link runs and model "
        "versions to ('' = lineage.tracking_uri when it is http(s), else no links).",
        versioned=False,
    )
    kfp_ui_url: str = knob(
        "",
        "Base URL of the Kubeflow Pipelines UI, e.g. https://kubeflow.example.com/pipeline: the report and "
        "`lmforge lineage` link each run's Kubeflow page <url>/#/runs/details/<run id> ('' = no links).",
        versioned=False,
    )


@_frozen
class ModelConfig:
    preset: str = knob("tiny", "Model architecture preset from components/common/models.py (tiny|mini|small|1b).")
    seq_len: int = knob(128, "Training context length in tokens.")
    init_from: str = knob("", "Path or hub id of pretrained weights ('' = random init from the preset).")


@_frozen
class TokenizerConfig:
    vocab_size: int = knob(2048, "BPE vocabulary size, special tokens included.")
    min_frequency: int = knob(2, "A merge must occur this often in the corpus to be learned.")
    path: str = knob("", "Use this saved HF tokenizer instead of training one ('' = train on the corpus).")


@_frozen
class CurateConfig:
    source: str = knob(
        "quickstart/tinyshakespeare.txt",
        "Pretraining corpus: a file, a directory, or an s3:// prefix of .txt/.jsonl(.gz) files; "
        "'quickstart/...' names data shipped with lmforge.",
    )
    text_field: str = knob("text", "JSONL field that holds a record's text.")
    normalization: str = knob("NFC", "Unicode normalization form applied to every record (NFC|NFKC|none).")
    min_chars: int = knob(32, "Drop records shorter than this many characters (after normalization).")
    max_chars: int = knob(100_000, "Drop records longer than this many characters.")
    heldout_fraction: float = knob(0.05, "Fraction of records kept apart as held-out evaluation data.")
    shard_tokens: int = knob(1_000_000, "Maximum tokens per packed shard file.")
    expectations: bool = knob(True, "Validate the curated records with the great-expectations suite.")
    quality_scores: bool = knob(
        True,
        "Record each train document's quality score, the mean margin by which it clears the enabled quality "
        "rules (train/quality.npz, components/curate/score.py), for continual.order=quality / pretrain.order=quality.",
    )
    select_fraction: float = knob(
        1.0,
        "Keep this fraction of the training documents, an informative subset (1 = all; held-out data is never "
        "subset). INGENIOUS (2023): a facility-location subset keeps ~99% of full-data quality.",
    )
    select_method: str = knob(
        "facility_location",
        "select_fraction < 1: 'facility_location' (diverse and representative, components/curate/select.py) "
        "or 'random' (a seeded random subset of the same size: the baseline).",
    )
    select_partition: int = knob(
        2048, "select_fraction < 1: documents per random partition selected at once (memory: partition^2 floats)."
    )
    # Pipeline steps (components/curate/pipeline.py; checked by components.curate.pipeline.check_curate_config).
    executor: str = knob(
        "local",
        "Where the per-document steps and MinHash stages run: 'local' (datatrove LocalPipelineExecutor) or "
        "'ray' (datatrove RayPipelineExecutor on curate.ray_address); same steps, same output.",
        versioned=False,
    )
    tasks: int = knob(
        1, "datatrove tasks (ranks) of the per-document steps; input files are dealt round-robin to tasks."
    )
    workers: int = knob(1, "Tasks run at once (processes locally, Ray tasks on Ray); -1 = all.", versioned=False)
    ray_address: str = knob(
        "local",
        "curate.executor=ray: 'local' starts a Ray inside the step; ray://head:10001 joins a cluster.",
        versioned=False,
    )
    repair: bool = knob(True, "Repair mojibake, HTML entities and control codes with ftfy (datatrove FTFYFormatter).")
    languages: list = knob(
        ["en"], "Language allow-list (ISO 639-1) for lingua language identification; [] = no language step."
    )
    language_candidates: list = knob(
        ["en", "de", "fr", "es", "it", "nl", "pt"],
        "Languages lingua chooses among (plus the allow-list): fewer is faster; text of a language left out is "
        "scored against these.",
    )
    language_threshold: float = knob(0.5, "Drop documents whose top language's lingua confidence is below this.")
    language_chars: int = knob(1000, "Identify the language on the first N characters (speed; paragraphs suffice).")
    gopher_quality: bool = knob(True, "Apply Gopher's quality rules (datatrove GopherQualityFilter).")
    gopher_min_words: int = knob(50, "Gopher: drop documents with fewer words (the paper's 50; verse needs less).")
    gopher_max_words: int = knob(100_000, "Gopher: drop documents with more words.")
    gopher_min_stop_words: int = knob(2, "Gopher: drop documents with fewer distinct English stop words.")
    gopher_min_alpha_ratio: float = knob(
        0.8, "Gopher: drop documents where fewer than this fraction of words (punctuation included) has a letter."
    )
    gopher_repetition: bool = knob(
        True, "Apply Gopher's repetition rules (duplicate lines/paragraphs/n-grams; GopherRepetitionFilter)."
    )
    gopher_top_ngram_max: list = knob(
        [0.2, 0.18, 0.16],
        "Gopher repetition: most frequent 2-, 3-, 4-gram may cover at most these fractions of the characters "
        "(the paper's values; short texts such as verse speeches need more slack).",
    )
    c4_quality: bool = knob(True, "Apply C4's rules (datatrove C4QualityFilter: lines, sentences, boilerplate).")
    c4_min_sentences: int = knob(5, "C4: drop documents with fewer sentences after line filtering (-1 = off).")
    c4_terminal_punct: bool = knob(
        True, "C4: remove lines that do not end in terminal punctuation (off for verse and lists)."
    )
    c4_min_words_per_line: int = knob(3, "C4: remove lines with fewer words (-1 = off).")
    fineweb_quality: bool = knob(True, "Apply FineWeb's rules (datatrove FineWebQualityFilter).")
    fineweb_short_line_ratio: float = knob(
        0.67, "FineWeb: drop documents where more than this fraction of lines has <= 30 characters."
    )
    fineweb_line_punct_ratio: float = knob(
        0.12, "FineWeb: drop documents where fewer than this fraction of lines end in terminal punctuation."
    )
    toxicity_wordlist: str = knob(
        "default",
        "Toxicity/NSFW word list: 'default' = components/curate/wordlists/nsfw_en.txt, a path to your own "
        "(one word or phrase per line), or 'none' to skip the step.",
    )
    toxicity_max_hits: int = knob(0, "Drop documents with more listed words than this (0 = any hit, as in C4).")
    pii: bool = knob(True, "Redact emails, IPs, phone and card numbers with typed placeholders (<EMAIL> ...).")
    pii_public_ips_only: bool = knob(True, "Redact only public IP addresses (private ones identify no one).")
    decontaminate: bool = knob(
        True, "Drop documents sharing a long word n-gram with the evaluation sets shipped in the repo."
    )
    decontaminate_ngrams: int = knob(13, "Decontamination n-gram length in words (13 as in GPT-3).")
    decontaminate_paths: list = knob(
        [], "Extra evaluation JSONL files to decontaminate against (besides the shipped ones)."
    )
    near_dedup: bool = knob(True, "Remove near-duplicates with MinHash LSH (datatrove MinhashDedup stages).")
    minhash_ngrams: int = knob(5, "MinHash shingle size in words.")
    minhash_bands: int = knob(
        14, "MinHash LSH bands (buckets); with rows=8 a pair at Jaccard 0.8 is caught 92% of the time."
    )
    minhash_rows: int = knob(8, "MinHash hashes per band.")
    dedup_previous: str = knob(
        "",
        "A previously curated dataset dir: documents (near-)duplicating it are dropped, only new ones kept; its "
        "dedup index is carried into this dataset ('' = dedup within this run only).",
    )
    # Synthetic rephrasing ("Rephrasing the Web"): validated by components.curate.rephrase.check_rephrase_config.
    rephrase_enabled: bool = knob(False, "Add LLM-rephrased copies of selected documents (originals are always kept).")
    rephrase_backend: str = knob(
        "openai", "Rephrasing model: 'openai' = an OpenAI-compatible server (vLLM), 'hf' = a local HF model directory."
    )
    rephrase_endpoint: str = knob(
        "http://127.0.0.1:8000/v1/completions",
        "openai backend: URL of /v1/completions (prompts batched per request) or /v1/chat/completions "
        "(one request per prompt, batch_size in flight); a bare .../v1 means /v1/completions.",
        versioned=False,
    )
    rephrase_model: str = knob(
        "", "openai backend: the served model name sent with each request; hf backend: path to the model directory."
    )
    rephrase_api_key_env: str = knob(
        "LMFORGE_REPHRASE_API_KEY",
        "Name of the environment variable holding the endpoint's API key (sent as a Bearer token; unset = no key). "
        "The key itself never enters the config, metrics or logs.",
        versioned=False,
    )
    rephrase_style: str = knob(
        "wikipedia",
        "Prompt template: a shipped style (wikipedia, qa, easy, hard; components/curate/prompts/) or a path to a "
        "template file with one {text} placeholder.",
    )
    rephrase_below: float = knob(
        0.5, "Rephrase documents whose metadata quality_score is below this; documents without a score are eligible."
    )
    rephrase_mix_ratio: float = knob(
        1.0,
        "Most synthetic characters added per original character of the whole corpus (1.0 = up to 1:1, as in the "
        "paper); the lowest-quality documents are rephrased first.",
    )
    rephrase_batch_size: int = knob(
        8, "Prompts per request (completions) or in flight (chat), or per generate call (hf)."
    )
    rephrase_max_retries: int = knob(
        4,
        "Retries of a request after 429/5xx/connection errors before its documents count as failed (they keep "
        "their original text only).",
        versioned=False,
    )
    rephrase_backoff_seconds: float = knob(
        1.0, "Delay before the first retry; doubles with each further retry.", versioned=False
    )
    rephrase_timeout_seconds: float = knob(120.0, "HTTP timeout of one rephrasing request.", versioned=False)
    rephrase_max_new_tokens: int = knob(512, "Most tokens generated per rephrased chunk.")
    rephrase_chunk_chars: int = knob(
        1200,
        "Longer documents are rephrased in chunks of at most this many characters (split at paragraph or "
        "sentence ends; the paper used ~300-token segments) and the chunks' rephrasings joined.",
    )


@_frozen
class PretrainConfig:
    num_workers: int = knob(2, "Ray Train workers (one process each; gloo on CPU, NCCL on GPU).")
    use_gpu: bool = knob(False, "Give each worker one GPU.")
    parallelism: str = knob(
        "ddp",
        "How the workers split the model: 'ddp' replicates it on every worker (gradients all-reduced); 'fsdp' "
        "shards parameters, gradients and AdamW state across the workers (FSDP2 fully_shard per decoder layer "
        "and the root), so each holds about 1/num_workers of the training state.",
    )
    steps: int = knob(200, "Optimizer steps.")
    batch_size: int = knob(8, "Sequences per worker per step.")
    lr: float = knob(3e-3, "Peak learning rate after warmup.")
    min_lr_ratio: float = knob(0.1, "Final LR as a fraction of the peak (cosine decay floor).")
    warmup_steps: int = knob(20, "Linear warmup steps from 0 to the peak LR.")
    order: str = knob(
        "random",
        "Order of the training corpus' windows: 'random' (a seeded shuffle per epoch) or 'quality' (ascending "
        "per-document quality score recorded by curation, best data last; pair with a constant LR and "
        "average=ema, docs/continual.md). 'quality' needs a dataset curated with scores (train/quality.npz).",
    )
    schedule: str = knob(
        "cosine",
        "LR schedule after warmup: 'cosine' (decay to min_lr_ratio), 'wsd' (stable at the peak, then decay over "
        "the last pretrain.decay_fraction of the steps), 'constant' (no decay) or 'inverse_sqrt'.",
    )
    decay_shape: str = knob(
        "sqrt",
        "schedule=wsd: shape of the final decay, 'linear', 'sqrt' (1-sqrt, Hägele et al. 2024) or 'cosine'.",
    )
    decay_fraction: float = knob(
        0.2, "schedule=wsd: fraction of pretrain.steps in the final decay (20% matches cosine, Hägele et al. 2024)."
    )
    branch_at: list[int] = knob(
        [],
        "schedule=wsd: stable-phase steps from which to branch a decay of the same length as the final one; each "
        "branch's model is an extra artifact (branches/step-<S>/) for evaluation; pretrain.publish_branch picks "
        "the one that flows downstream.",
    )
    publish_branch: int = knob(
        0,
        "Which model flows downstream: 0 = the main run (its final decay); S = the WSD decay branched at step S "
        "(one of pretrain.branch_at), whose model then is the stage's model/ (the main run's moves to "
        "branches/final/) and whose numbers are the stage's metrics.",
    )
    average: str = knob(
        "none",
        "Weight averaging; the average is the model later stages receive: 'ema' (every step, bias-corrected), "
        "'uniform' or 'weighted' (1, 2, ..., K) mean of the last pretrain.average_last_k snapshots taken every "
        "pretrain.average_every steps, or 'none'. Costs host memory: one (ema) or K copies of the weights per worker.",
    )
    average_every: int = knob(10, "average=uniform|weighted: snapshot the weights every N steps (and at the last).")
    average_last_k: int = knob(5, "average=uniform|weighted: how many of the newest snapshots are averaged.")
    ema_decay: float = knob(
        0.0,
        "average=ema: per-step decay d of ema = d*ema + (1-d)*weights; 0 = fitted to the run: d = 1 - 1/W, "
        "W = max(2, pretrain.decay_fraction x pretrain.steps), so the average spans (mean weight age 1/(1-d)) "
        "the tail a WSD decay would take (150 steps: W=30, d~0.967).",
    )
    weight_decay: float = knob(0.1, "AdamW weight decay (not applied to norms and biases).")
    grad_clip: float = knob(1.0, "Clip the global gradient norm to this value (0 = off).")
    checkpoint_every: int = knob(50, "Write a persistent checkpoint to the store every N steps.", versioned=False)
    keep_checkpoints: int = knob(2, "Persistent checkpoints kept per run; older ones are deleted.", versioned=False)
    eval_checkpoints: int = knob(
        4,
        "Models kept for evaluation (0 = none, else 2..pretrain.steps): K evenly spaced steps, the last the final "
        "one, saved as <output>/eval_checkpoints/step-<S>/model (no optimizer state; apart from keep_checkpoints, "
        "which is for resuming). The evaluate stage scores each one and reports Kendall's tau between the rankings "
        "(components/evaluate/stability.py); each costs one full evaluation.",
    )
    log_every: int = knob(10, "Log loss and throughput every N steps.", versioned=False)
    max_failures: int = knob(2, "Worker-group restarts Ray Train may do before the stage fails.", versioned=False)
    health_check_interval_s: float = knob(
        0.5,
        "Seconds between Ray Train's polls of its workers: a crashed worker is noticed within one interval "
        "(Ray's default 2 s; a poll is one tiny actor call per worker).",
        versioned=False,
    )
    preemption_watcher: bool = knob(
        False,
        "Run Ray Train's preemption watcher: one more actor process per worker-group start (each restart too) "
        "that only logs node drains and answers ray.train.get_preemption_info, which lmforge never calls; off, "
        "a restart starts one process fewer (its imports take ~2.4 s of CPU).",
        versioned=False,
    )
    spare_workers: int = knob(
        0,
        "Idle worker processes kept per training rank on its node, started while training runs with Ray Train, "
        "torch, transformers and the plugins already imported, so that a worker group restarted after a failure "
        "starts in them instead of paying a process start and those imports (~4 s of CPU per rank); 0 = off. "
        "Each costs its node a few hundred MB of host memory (components/training/spares.py). Rank 0 also "
        "prestarts them on standby nodes (alive nodes where a rank fits and none runs: cluster.standby_nodes), "
        "so a group restarted there after a node loss starts warm too.",
        versioned=False,
    )
    spare_keep_alive_s: float = knob(
        600.0,
        "pretrain.spare_workers > 0: the raylet keeps each spare at least this long even on a node whose CPUs "
        "are all taken (then reaps it; each node replaces reaped or used spares within 30 s).",
        versioned=False,
    )
    launcher: str = knob(
        "ray",
        "How a training step runs its Ray Train job: 'ray' drives it from the step itself on pretrain.ray_address; "
        "'rayjob' creates a KubeRay RayJob (settings under cluster.*) and follows it (pretrain and continual).",
        versioned=False,
    )
    ray_address: str = knob(
        "local",
        "launcher=ray: 'local' starts a Ray inside this step; 'auto' joins the Ray of this node; "
        "ray://head:10001 joins an existing RayCluster as a Ray Client.",
        versioned=False,
    )
    data_cache_dir: str = knob(
        "",
        "Node-local directory where training workers keep whole shards (and the start model) downloaded from the "
        "store, once per node; '' = stream each window with a ranged read, prefetching the next step's batch.",
        versioned=False,
    )


@_frozen
class ContinualConfig:
    source: str = knob(
        "quickstart/wikitext2.txt", "Second-domain corpus for continual pretraining (same forms as curate.source)."
    )
    complete_marker: str = knob(
        "_SUCCESS",
        "Retrain trigger (`lmforge submit --if-new-data`): new data counts only once an object of this name is "
        "under the prefix, written last by the uploader ('' = no marker; then set continual.quiet_seconds).",
        versioned=False,
    )
    quiet_seconds: float = knob(
        0.0,
        "Retrain trigger: new data counts only after its listing stayed unchanged this long, seen on ticks at "
        "least that far apart (0 = off; the marker alone decides).",
        versioned=False,
    )
    steps: int = knob(100, "Optimizer steps on the new corpus.")
    batch_size: int = knob(8, "Sequences per worker per step.")
    lr: float = knob(1.5e-3, "Peak LR after re-warming (continual runs re-warm, then decay again).")
    min_lr_ratio: float = knob(0.1, "Final LR as a fraction of the peak.")
    warmup_steps: int = knob(10, "Re-warming steps from 0 to the peak LR.")
    order: str = knob(
        "random",
        "Order of the training corpus' windows: 'random' (a seeded shuffle per epoch) or 'quality' (ascending "
        "per-document quality score recorded by curation, best data last; pair with a constant LR and "
        "average=ema, docs/continual.md). 'quality' needs a dataset curated with scores (train/quality.npz).",
    )
    schedule: str = knob(
        "cosine",
        "LR schedule after warmup: 'cosine' (decay to min_lr_ratio), 'wsd' (stable at the peak, then decay over "
        "the last continual.decay_fraction of the steps), 'constant' (no decay) or 'inverse_sqrt'.",
    )
    decay_shape: str = knob(
        "sqrt",
        "schedule=wsd: shape of the final decay, 'linear', 'sqrt' (1-sqrt, Hägele et al. 2024) or 'cosine'.",
    )
    decay_fraction: float = knob(
        0.2, "schedule=wsd: fraction of continual.steps in the final decay (20% matches cosine, Hägele et al. 2024)."
    )
    branch_at: list[int] = knob(
        [],
        "schedule=wsd: stable-phase steps from which to branch a decay of the same length as the final one; each "
        "branch's model is an extra artifact (branches/step-<S>/) for evaluation; continual.publish_branch picks "
        "the one that flows downstream.",
    )
    publish_branch: int = knob(
        0,
        "Which model flows downstream: 0 = the main run (its final decay); S = the WSD decay branched at step S "
        "(one of continual.branch_at), whose model then is the stage's model/ (the main run's moves to "
        "branches/final/) and whose numbers are the stage's metrics.",
    )
    average: str = knob(
        "none",
        "Weight averaging; the average is the model later stages receive: 'ema' (every step, bias-corrected), "
        "'uniform' or 'weighted' (1, 2, ..., K) mean of the last continual.average_last_k snapshots taken every "
        "continual.average_every steps, or 'none'. Costs host memory: one (ema) or K copies of the weights per worker.",
    )
    average_every: int = knob(10, "average=uniform|weighted: snapshot the weights every N steps (and at the last).")
    average_last_k: int = knob(5, "average=uniform|weighted: how many of the newest snapshots are averaged.")
    ema_decay: float = knob(
        0.0,
        "average=ema: per-step decay d of ema = d*ema + (1-d)*weights; 0 = fitted to the run: d = 1 - 1/W, "
        "W = max(2, continual.decay_fraction x continual.steps), so the average spans (mean weight age 1/(1-d)) "
        "the tail a WSD decay would take (150 steps: W=30, d~0.967).",
    )
    replay_fraction: float = knob(
        0.1,
        "Fraction of each batch replayed from the corpora the base model learned (every ancestor in its "
        "lineage, shared equally; 0 = no replay).",
    )
    replay_ratios: dict = knob(
        {},
        "Per-corpus replay, {corpus label: fraction of each batch} (labels as in forgetting/<corpus>), "
        "replacing replay_fraction; unlisted ancestors are not replayed. Fractions >= 0, sum < 1.",
    )
    base_model: str = knob(
        "",
        "continual pipeline only: store URI of the model to continue from ('' = the registry champion's base model).",
        versioned=False,
    )
    old_dataset: str = knob(
        "",
        "continual pipeline only: store URI of the curated corpus the base model learned ('' = from the champion's lineage).",
        versioned=False,
    )
    probe_every: int = knob(
        0,
        "Measure every corpus' held-out loss every N steps while training, to show the stability gap "
        "(0 = continual.probes evenly spaced points).",
        versioned=False,
    )
    probes: int = knob(
        24,
        "Held-out probes per run when probe_every=0, evenly spaced (>= 20, so an early dip is not missed; "
        "each costs one held-out pass per corpus).",
        versioned=False,
    )
    probe_density: int = knob(
        4,
        "Probes are this many times denser during re-warming and as many steps again after it, where the "
        "stability gap opens (1 = uniform).",
        versioned=False,
    )


@_frozen
class AlignConfig:
    source: str = knob("quickstart/gsm8k_train.jsonl", "SFT data: JSONL with prompt/response fields.")
    prompt_field: str = knob("question", "JSONL field holding the user turn.")
    response_field: str = knob("answer", "JSONL field holding the assistant turn.")
    max_examples: int = knob(2000, "Use at most this many training pairs (0 = all).")
    steps: int = knob(100, "Optimizer steps.")
    batch_size: int = knob(8, "Pairs per step.")
    lr: float = knob(1e-3, "Peak learning rate.")
    warmup_steps: int = knob(10, "Linear warmup steps.")
    max_len: int = knob(256, "Truncate prompt+response to this many tokens.")
    heldout_fraction: float = knob(0.05, "Fraction of the pairs held out to measure answer loss (at least one pair).")
    log_every: int = knob(10, "Log loss every N steps.", versioned=False)
    packing: bool = knob(
        False,
        "SFT: trl's padding-free packing (best-fit decreasing): several pairs share a row of align.max_len tokens, "
        "no pad tokens, attention kept within each pair through position_ids.",
    )
    lora_r: int = knob(
        0, "SFT: 0 = full fine-tune; > 0 = LoRA of this rank on every linear layer (peft), merged before saving."
    )
    lora_alpha: int = knob(16, "SFT: LoRA scaling numerator (the update is scaled by lora_alpha / lora_r).")
    arithmetic_steps: int = knob(
        0,
        "SFT: after the fine-tune on align.source, this many steps more on the training side of single-digit "
        "addition (the ~75 problems components/common/arithmetic.py puts there; their held-out side is the "
        "lmforge_arithmetic_1digit task, never trained on); 0 = none. A phase of its own because mixed into "
        "align.source's pairs the problems are not learned (tiny, 150 packed steps: held-out exact match 0.08, as "
        "before). Its price on tiny: the language is unlearned (pretraining-corpus perplexity 1.1e5 after 300 steps), so "
        "no profile turns it on yet. Needs align.lora_r=0 and no FSDP (align.use_gpu with align.num_workers >= 2).",
    )
    arithmetic_batch_size: int = knob(32, "SFT arithmetic phase: problems per step (global, like align.batch_size).")
    arithmetic_lr: float = knob(3e-3, "SFT arithmetic phase: peak learning rate (cosine decay, align.warmup_steps).")
    arithmetic_weight_decay: float = knob(
        3.0,
        "SFT arithmetic phase: AdamW weight decay, the lever of memorise-then-generalise (grokking) on a small "
        "table. On tiny, 300 steps of 32 reached held-out exact match 0.68-0.92 in each of 4 data orders with 3.0 "
        "(0.20-0.80 without decay; tests/benchmarks/test_arithmetic_learning.py).",
    )
    num_workers: int = knob(
        1,
        "SFT: 1 = train in the step's own process; >= 2 = a Ray Train job of that many workers on "
        "pretrain.ray_address (DDP over gloo on CPU; FSDP with align.use_gpu). align.batch_size stays the global "
        "batch, split evenly across the workers, so the result matches the one-process run's.",
    )
    use_gpu: bool = knob(
        False,
        "SFT with align.num_workers >= 2: one GPU per worker and the model sharded with FSDP (full_shard, one unit "
        "per decoder layer) instead of replicated with DDP.",
    )
    method: str = knob(
        "none",
        "Preference step after SFT: none (the SFT model passes through), dpo (align.preferences), online_dpo or "
        "expert_iteration (both on generated arithmetic prompts with a verifier as judge).",
    )
    preferences: str = knob(
        "",
        "Preference pairs for dpo and the reward model: HH-RLHF {chosen, rejected} dialogues or "
        "{prompt, chosen, rejected} JSONL (a file, directory or s3:// prefix).",
    )
    pref_heldout_fraction: float = knob(
        0.1, "Share of preference pairs held out by content (components/common/splits.py), never trained on."
    )
    pref_steps: int = knob(60, "Optimizer steps of the preference step (DPO, reward model, each online round).")
    pref_batch_size: int = knob(8, "Preference pairs (or prompts) per step.")
    pref_lr: float = knob(5e-4, "Peak learning rate of the preference step (the tiny model needs a large one).")
    beta: float = knob(0.1, "DPO beta: how far the policy may move from the frozen reference.")
    loss_type: str = knob("sigmoid", "DPO loss (trl loss_type): sigmoid, ipo, hinge, robust, ...")
    reward_model: bool = knob(
        False, "Also train a Bradley-Terry reward model on align.preferences (a sub-step; reports its accuracy)."
    )
    samples_per_prompt: int = knob(4, "Responses sampled per prompt (expert iteration, online DPO).")
    rounds: int = knob(3, "Expert-iteration rounds (sample, keep verified-correct, fine-tune).")
    prompts_per_round: int = knob(64, "Arithmetic prompts expert iteration samples in every round.")
    task_digits: list = knob([1, 2], "Operand digits (min, max) of the generated arithmetic task.")
    temperature: float = knob(1.0, "Sampling temperature of expert iteration and online DPO.")
    judge: str = knob(
        "verifier",
        "Online DPO's judge: verifier (generated arithmetic prompts, an exact answer decides) or reward_model (a "
        "Bradley-Terry model trained first on align.preferences scores the samples; the prompts are those pairs' "
        "training prompts).",
    )
    staleness: int = knob(
        0,
        "Online DPO: 0 = synchronous (the learner generates each batch itself); s >= 1 = asynchronous, generation "
        "in its own Ray actor whose policy copy lags the learner by up to s updates.",
    )


#: The methods behind quantize.method (implemented in components/quantize/methods.py).
QUANTIZE_METHODS = (
    "none",
    "int8_weight_only",
    "int8_dynamic",
    "int4_weight_only",
    "intx_weight_only",
    "llm_int8",
    "nf4",
    "fp4",
)


@_frozen
class QuantizeConfig:
    method: str = knob(
        "int8_weight_only",
        "Weight quantization: none | int8_weight_only | int8_dynamic (int8 activations too) | int4_weight_only | "
        "intx_weight_only (quantize.bits, round-to-nearest) | llm_int8 (bitsandbytes, outliers in 16-bit) | nf4 | fp4.",
    )
    bits: int = knob(4, "Bits per weight of intx_weight_only (1..8).")
    group_size: int = knob(
        32, "Weights sharing one scale in int4/intx_weight_only (must divide each layer's input width; 0 = per row)."
    )
    llm_int8_threshold: float = knob(
        6.0, "llm_int8: input columns with any |value| above this are multiplied in 16-bit (the paper's 6.0)."
    )
    sweep_bits: list = knob(
        [],
        "Also run the low-bit study: round-to-nearest at these bit widths (e.g. [2, 3, 4, 5, 6, 8]); [] = no sweep.",
    )
    sweep_group_sizes: list = knob([32], "Group sizes of the low-bit study (0 = one scale per row).")
    generate_tokens: int = knob(32, "Tokens generated greedily to measure generation tokens/s.", versioned=False)


@_frozen
class GateConfig:
    primary: str = knob(
        "heldout_perplexity",
        "Evaluation metric that must beat the champion's beyond the noise margin for a promotion; its direction "
        "comes from the metric (lm-eval's higher_is_better; perplexity, loss, forgetting: lower is better).",
    )
    guards: list = knob(
        [],
        "Rules every promotion must also pass, each '<metric> <op> <value>': 'drop<=' (worse than the champion by "
        "at most value, beyond noise), '<=' or '>=' (an absolute bound), e.g. 'lmforge_arithmetic_exact_match "
        "drop<=0.05', 'continual_forgetting <=0.5', 'quantize_perplexity_delta_pct <=10'.",
    )
    z: float = knob(
        1.96,
        "Noise margin in standard errors: a difference counts only beyond z*sqrt(se_new^2 + se_champion^2) "
        "(1.96: a two-sided 95% band).",
    )


@_frozen
class EvaluateConfig:
    tasks: list = knob(
        ["lmforge_shakespeare_cloze"],
        "lm-eval tasks to run: those shipped in components/evaluate/tasks/ (offline), or any standard lm-eval task "
        "or group by name (hellaswag, arc_easy, mmlu) where its data is reachable (hub, HF_ENDPOINT mirror or "
        "datasets cache); an unreachable one fails before any model is loaded.",
    )
    blank_tasks: list = knob(
        [],
        "Multiple-choice tasks also scored by BOSE's blank perplexity (each option filled into the item's text, "
        "the text with the lowest per-byte perplexity wins): <task>_blank_acc and <task>_blank_ppl beside the "
        "task's log-likelihood acc when the task is in evaluate.tasks, alone otherwise (components/evaluate/blank.py).",
    )
    limit: int = knob(0, "Evaluate at most this many examples per task (0 = all).")
    heldout_max_tokens: int = knob(50_000, "Tokens of held-out data used for perplexity.")
    batch_size: int = knob(8, "Batch size for perplexity and lm-eval.", versioned=False)
    preference_source: str = knob(
        "",
        "Preference pairs (HH-RLHF or {prompt, chosen, rejected} JSONL: file, directory or s3:// prefix) whose "
        "held-out side gives preference_acc; '' = not measured.",
    )
    preference_heldout_fraction: float = knob(
        0.1,
        "Held-out share of the preference pairs scored for preference_acc; at most align.pref_heldout_fraction. "
        "The split is by content and nested (components/common/splits.py): every pair held out here is then held "
        "out of alignment too, so no scored pair was trained on.",
    )
    preference_max_pairs: int = knob(200, "Score at most this many held-out pairs (0 = all).")
    gate: GateConfig = section(GateConfig, "The promotion gate: primary metric, guards and noise margin.")


@_frozen
class RegisterConfig:
    model_name: str = knob("lmforge-chat", "MLflow registered-model name.", versioned=False)
    lease_seconds: float = knob(
        120.0,
        "Lifetime of the per-model lease register holds while it moves the aliases (object store, "
        "leases/register/<model>.json); a crashed holder blocks others at most this long.",
        versioned=False,
    )
    lease_wait_seconds: float = knob(
        600.0, "How long register waits for another run's lease on the same model before failing.", versioned=False
    )


#: One gate guard: '<metric> <op> <value>' (see GateConfig.guards); parsed by components/evaluate/gate.py.
GUARD_PATTERN = r"^\s*(?P<metric>\S+)\s+(?P<op>drop<=|<=|>=)\s*(?P<value>[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*$"


#: Keys that were removed, with the message that shows their replacement (checked before "unknown key").
RENAMED = {
    "register.metric": "register.metric was replaced by the promotion gate: set evaluate.gate.primary=<metric> "
    "(e.g. evaluate.gate.primary=heldout_perplexity) and add guards in evaluate.gate.guards",
    "register.greater_is_better": "register.greater_is_better was removed: the gate takes each metric's direction "
    "from the metric itself (lm-eval's higher_is_better; perplexity, loss, forgetting lower); "
    "set evaluate.gate.primary=<metric>",
}


@_frozen
class ResilienceConfig:
    enabled: bool = knob(
        False, "Snapshot training state into keeper memory (in-memory fault tolerance).", versioned=False
    )
    snapshot_every: int = knob(1, "Take an in-memory snapshot every N optimizer steps.", versioned=False)
    scheme: str = knob("xor", "Erasure code across nodes: xor (k+1 parity) or rs (Reed-Solomon, k+m).", versioned=False)
    k: int = knob(2, "Data shards per erasure-coding group (one per node in the group).", versioned=False)
    m: int = knob(1, "Parity shards per group: any m node losses in a group are survivable.", versioned=False)
    persist_every: int = knob(10, "Keepers write every Nth committed snapshot to the object store.", versioned=False)
    keeper_memory_mb: int = knob(1024, "Memory budget of one snapshot keeper (checked at start-up).", versioned=False)
    max_in_flight: int = knob(1, "Snapshots being copied at once per rank before the trainer waits.", versioned=False)
    coalesce: bool = knob(
        False,
        "Skip a due snapshot while any rank's previous one is still being handed off, instead of waiting for it "
        "(snapshot_every becomes 'at most this often'; the log and summary report the snapshots skipped).",
        versioned=False,
    )
    faults: list = knob(
        [],
        "Injected faults (components/resilience/faults.py), each '<kind>@step=S[,node=N][,rank=R][,after_s=T]', fired once "
        "per run; kinds: worker_crash[,rank=R], worker_hang[,rank=R], node_loss[,node=N], keeper_crash[,node=N] "
        "(node=N: the node running rank N), commit_cut, corrupt_piece. E.g. "
        "'worker_crash@step=40,rank=1;node_loss@step=60,node=2;commit_cut@step=30' (';' separates faults). "
        "',after_s=T' on any of them: strike at the first step >= S once the worker group has trained T seconds "
        "(a fault that comes when the spares are warm; the step then depends on the run's speed).",
        versioned=False,
    )
    hang_factor: float = knob(
        10.0,
        "Hang watchdog (with resilience.enabled): a rank whose step runs longer than hang_factor x the median of "
        "its recent step times (and at least resilience.hang_min_seconds) is declared hung: its stack is logged "
        "and its process exits so Ray Train restarts the worker group (0 = no watchdog).",
        versioned=False,
    )
    hang_min_seconds: float = knob(
        300.0,
        "Shortest step time the hang watchdog ever declares a hang at (covers slow first steps, evaluation, "
        "checkpoint uploads and collectives after a peer's restart).",
        versioned=False,
    )


@_frozen
class ClusterConfig:
    """Where and how steps and Ray jobs run on Kubernetes; read when compiling and by the RayJob launcher."""

    namespace: str = knob(
        "", "Namespace of the RayJobs training steps create ('' = the step pod's own namespace).", versioned=False
    )
    image: str = knob(
        "",
        "Image of the Ray head and CPU workers ('' = the image this step runs in, $LMFORGE_IMAGE, else the "
        "compiled default).",
        versioned=False,
    )
    gpu_image: str = knob(
        "", "CUDA image for GPU Ray workers and GPU pipeline steps ('' = components/common/images.py).", versioned=False
    )
    s3_secret: str = knob(
        "lmforge-s3",
        "Secret whose AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY reach every step and Ray pod as env.",
        versioned=False,
    )
    ray_token_secret: str = knob(
        "",
        "Secret with key 'auth_token' (KubeRay's key) for Ray's token authentication: RAY_AUTH_MODE=token and "
        "RAY_AUTH_TOKEN on head, workers and submitter, and the operator's own job-status calls; '' = no token.",
        versioned=False,
    )
    mlflow_secret: str = knob(
        "",
        "Secret with keys 'username' and 'password' for an MLflow server with basic auth (the chart's "
        "mlflow.auth): steps and Ray pods get them as MLFLOW_TRACKING_USERNAME/PASSWORD; '' = no auth.",
        versioned=False,
    )
    head_cpu: str = knob("2", "CPU request and limit of the Ray head pod.", versioned=False)
    head_memory: str = knob(
        "8Gi", "Memory request and limit of the Ray head pod (it runs the Ray Train driver).", versioned=False
    )
    worker_cpu: str = knob("8", "CPU request and limit of one Ray worker pod.", versioned=False)
    worker_memory: str = knob("64Gi", "Memory request and limit of one Ray worker pod.", versioned=False)
    gpus_per_worker_pod: int = knob(
        1,
        "GPUs per Ray worker pod when pretrain.use_gpu (replicas = ceil(pretrain.num_workers / this)); "
        "also the GPU count of GPU pipeline steps.",
        versioned=False,
    )
    gpu_resource: str = knob("nvidia.com/gpu", "Kubernetes extended resource name of a GPU.", versioned=False)
    shm_size: str = knob(
        "8Gi",
        "Size of the memory-backed /dev/shm of Ray pods (NCCL and torch dataloaders need more than the 64 MiB default).",
        versioned=False,
    )
    tolerations: list = knob(
        [],
        "Tolerations of GPU Ray workers and GPU steps, e.g. [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}].",
        versioned=False,
    )
    node_selector: dict = knob(
        {},
        "Node labels GPU Ray workers and GPU steps must match, e.g. {nvidia.com/gpu.present: 'true'}.",
        versioned=False,
    )
    standby_nodes: int = knob(
        0,
        "Worker pods beyond what pretrain.num_workers needs, kept idle in the RayJob's cluster as hot standby: when "
        "a node is lost, Ray Train restarts the worker group on the survivors and a standby pod at once, instead of "
        "waiting for KubeRay to reschedule the lost pod (scheduling, image pull, Ray start: minutes). With "
        "pretrain.spare_workers > 0 rank 0 prestarts spare worker processes on them too (components/training/"
        "spares.py); they hold snapshot pieces like any training node. Each costs a whole pod (its GPUs too).",
        versioned=False,
    )
    node_health_check_ms: int = knob(
        1000,
        "How often the GCS checks that each Ray node is alive, and how long one check may take, in ms; a node is "
        "declared dead after 3 failed checks (RAY_health_check_* on the RayJob's head). Ray's defaults (every "
        "3000 ms, a check may take 10000 ms, 5 failures) notice a lost node after 15-50 s, when the survivors' "
        "collectives do not fail first (a machine gone without closing its connections): longer than the whole "
        "in-memory recovery. 0 keeps Ray's defaults.",
        versioned=False,
    )
    job_ttl_seconds: int = knob(
        600, "Seconds KubeRay keeps a finished RayJob's cluster before deleting it (for debugging).", versioned=False
    )
    job_deadline_seconds: int = knob(0, "Kill a RayJob running longer than this (0 = no deadline).", versioned=False)
    gpu_steps: list = knob(
        ["align", "prefer", "quantize", "evaluate"],
        "Pipeline steps that run in gpu_image with gpus_per_worker_pod GPUs, tolerations and node_selector "
        "(read by `lmforge compile`; add pretrain/continual only if they train inside their own pod).",
        versioned=False,
    )
    step_memory: dict = knob(
        {},
        "Memory request and limit per pipeline step, e.g. {align: 64Gi}; steps not named keep the defaults for "
        "model.preset in pipelines/graph.py (read by `lmforge compile`).",
        versioned=False,
    )
    step_retries: int = knob(
        0,
        "KFP retries of a failed idempotent step (pod evicted, node lost; see pipelines/graph.py for which steps), "
        "with exponential backoff; 0 = none, as on one machine where a failure would only repeat. The cluster "
        "profile sets it (read by `lmforge compile`).",
        versioned=False,
    )
    step_retry_window_hours: int = knob(
        720,
        "Retries stop this long after a step first started; Argo (KFP's backend) also makes it the deadline of "
        "every attempt's pod, so it must exceed the longest step (a 1B pretraining runs for days; KFP's own "
        "default, 1 h, would kill it).",
        versioned=False,
    )


@_frozen
class LifecycleConfig:
    run: RunConfig = section(RunConfig, "Run-wide settings.")
    storage: StorageConfig = section(StorageConfig, "Object store (local directory or S3/MinIO).")
    lineage: LineageConfig = section(LineageConfig, "MLflow tracking.")
    model: ModelConfig = section(ModelConfig, "Model architecture.")
    tokenizer: TokenizerConfig = section(TokenizerConfig, "BPE tokenizer.")
    curate: CurateConfig = section(CurateConfig, "Data curation.")
    pretrain: PretrainConfig = section(PretrainConfig, "Pretraining on Ray Train.")
    continual: ContinualConfig = section(ContinualConfig, "Continual pretraining on a second corpus.")
    align: AlignConfig = section(
        AlignConfig, "Alignment: supervised fine-tuning, then a preference step (align.method)."
    )
    quantize: QuantizeConfig = section(QuantizeConfig, "Weight quantization.")
    evaluate: EvaluateConfig = section(EvaluateConfig, "Evaluation and promotion metrics.")
    register: RegisterConfig = section(RegisterConfig, "Model registry.")
    resilience: ResilienceConfig = section(ResilienceConfig, "In-memory, erasure-coded snapshots for pretraining.")
    cluster: ClusterConfig = section(
        ClusterConfig, "Kubernetes placement of steps and of the RayJobs training creates."
    )

    def __post_init__(self) -> None:
        _validate(self)


def _validate(cfg: LifecycleConfig) -> None:
    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {message}")

    need(cfg.model.seq_len >= 8, "model.seq_len", f"must be >= 8, got {cfg.model.seq_len}")
    need(
        cfg.tokenizer.vocab_size >= 300,
        "tokenizer.vocab_size",
        f"must be >= 300 (256 bytes + specials), got {cfg.tokenizer.vocab_size}",
    )
    need(0.0 <= cfg.curate.heldout_fraction < 0.5, "curate.heldout_fraction", "must be in [0, 0.5)")
    need(cfg.curate.min_chars < cfg.curate.max_chars, "curate.min_chars", "must be below curate.max_chars")
    need(0.0 < cfg.curate.select_fraction <= 1.0, "curate.select_fraction", "must be in (0, 1] (1 = all documents)")
    need(
        cfg.curate.select_method in {"facility_location", "random"},
        "curate.select_method",
        f"must be facility_location or random, got {cfg.curate.select_method!r}",
    )
    need(cfg.curate.select_partition >= 2, "curate.select_partition", "must be >= 2")
    need(
        cfg.curate.normalization in {"NFC", "NFKC", "NFD", "NFKD", "none"},
        "curate.normalization",
        "must be NFC, NFKC, NFD, NFKD or none",
    )
    for name in ("pretrain", "continual", "align"):
        sec = getattr(cfg, name)
        need(sec.steps > 0, f"{name}.steps", f"must be > 0, got {sec.steps}")
        need(sec.lr > 0, f"{name}.lr", f"must be > 0, got {sec.lr}")
        need(
            0 <= sec.warmup_steps < sec.steps,
            f"{name}.warmup_steps",
            f"must be below {name}.steps={sec.steps}, got {sec.warmup_steps}; lower it or raise {name}.steps",
        )
    for name in ("pretrain", "continual"):
        _validate_schedule(getattr(cfg, name), name)
        need(
            getattr(cfg, name).average == "none" or cfg.pretrain.parallelism == "ddp",
            f"{name}.average",
            "weight averaging keeps full copies of the weights and needs pretrain.parallelism=ddp; "
            f"set {name}.average=none or pretrain.parallelism=ddp",
        )
    need(0.0 < cfg.align.heldout_fraction < 0.5, "align.heldout_fraction", "must be in (0, 0.5)")
    need(cfg.align.max_len >= 8, "align.max_len", f"must be >= 8, got {cfg.align.max_len}")
    need(
        cfg.align.method in ALIGN_METHODS,
        "align.method",
        f"unknown method {cfg.align.method!r}; set it to one of: {', '.join(ALIGN_METHODS)}",
    )
    need(
        cfg.align.method != "dpo" or bool(cfg.align.preferences),
        "align.preferences",
        "align.method=dpo needs preference pairs; set align.preferences to a JSONL file or directory",
    )
    need(0.0 < cfg.align.pref_heldout_fraction < 0.5, "align.pref_heldout_fraction", "must be in (0, 0.5)")
    for key in ("pref_steps", "pref_batch_size", "samples_per_prompt", "rounds", "prompts_per_round"):
        need(getattr(cfg.align, key) >= 1, f"align.{key}", f"must be >= 1, got {getattr(cfg.align, key)}")
    need(
        cfg.align.samples_per_prompt >= 2 or cfg.align.method != "online_dpo",
        "align.samples_per_prompt",
        "online_dpo pairs the best and worst of the samples; set it to >= 2",
    )
    need(cfg.align.beta > 0, "align.beta", f"must be > 0, got {cfg.align.beta}")
    need(cfg.align.lora_r >= 0, "align.lora_r", f"must be >= 0 (0 = full fine-tune), got {cfg.align.lora_r}")
    need(cfg.align.num_workers >= 1, "align.num_workers", f"must be >= 1, got {cfg.align.num_workers}")
    need(
        cfg.align.batch_size % cfg.align.num_workers == 0,
        "align.batch_size",
        f"the global batch {cfg.align.batch_size} must split evenly across align.num_workers={cfg.align.num_workers}; "
        "set align.batch_size to a multiple of align.num_workers",
    )
    need(
        not (cfg.align.use_gpu and cfg.align.num_workers >= 2 and cfg.align.lora_r),
        "align.lora_r",
        "LoRA is merged into the base weights before saving, which FSDP-sharded SFT (align.use_gpu with "
        "align.num_workers >= 2) cannot do; set align.lora_r=0 or align.num_workers=1",
    )
    need(
        cfg.align.arithmetic_steps >= 0,
        "align.arithmetic_steps",
        f"must be >= 0 (0 = none), got {cfg.align.arithmetic_steps}",
    )
    if cfg.align.arithmetic_steps:
        need(cfg.align.arithmetic_lr > 0, "align.arithmetic_lr", f"must be > 0, got {cfg.align.arithmetic_lr}")
        need(
            cfg.align.arithmetic_weight_decay >= 0,
            "align.arithmetic_weight_decay",
            f"must be >= 0, got {cfg.align.arithmetic_weight_decay}",
        )
        need(
            cfg.align.arithmetic_batch_size >= 1 and cfg.align.arithmetic_batch_size % cfg.align.num_workers == 0,
            "align.arithmetic_batch_size",
            f"must be >= 1 and split evenly across align.num_workers={cfg.align.num_workers}, "
            f"got {cfg.align.arithmetic_batch_size}",
        )
        # The phase fine-tunes the plain model the first phase leaves: a LoRA-wrapped or FSDP-sharded one
        # would need its own path (not built: no profile asks for it).
        need(
            not cfg.align.lora_r and not (cfg.align.use_gpu and cfg.align.num_workers >= 2),
            "align.arithmetic_steps",
            "the arithmetic phase runs only after a full fine-tune without FSDP; set align.arithmetic_steps=0, or "
            "align.lora_r=0 and align.use_gpu=false",
        )
    need(
        cfg.align.judge in JUDGES,
        "align.judge",
        f"unknown judge {cfg.align.judge!r}; set it to one of: {', '.join(JUDGES)}",
    )
    need(
        cfg.align.judge != "reward_model" or cfg.align.method != "online_dpo" or bool(cfg.align.preferences),
        "align.preferences",
        "align.judge=reward_model trains its reward model on preference pairs; set align.preferences to a JSONL "
        "file or directory (or align.judge=verifier)",
    )
    need(cfg.align.staleness >= 0, "align.staleness", f"must be >= 0 (0 = synchronous), got {cfg.align.staleness}")
    need(
        len(cfg.align.task_digits) == 2 and 1 <= cfg.align.task_digits[0] <= cfg.align.task_digits[1],
        "align.task_digits",
        f"must be [min, max] with 1 <= min <= max, got {cfg.align.task_digits}",
    )
    need(cfg.pretrain.num_workers >= 1, "pretrain.num_workers", "must be >= 1")
    need(
        cfg.pretrain.parallelism in {"ddp", "fsdp"},
        "pretrain.parallelism",
        f"must be ddp or fsdp, got {cfg.pretrain.parallelism!r}",
    )
    need(cfg.pretrain.checkpoint_every > 0, "pretrain.checkpoint_every", "must be > 0")
    need(cfg.pretrain.keep_checkpoints >= 1, "pretrain.keep_checkpoints", "must be >= 1")
    k, steps = cfg.pretrain.eval_checkpoints, cfg.pretrain.steps
    need(
        k == 0 or 2 <= k <= steps,
        "pretrain.eval_checkpoints",
        f"must be 0 (off) or between 2 (a ranking needs two checkpoints) and pretrain.steps={steps} "
        f"(one checkpoint per step at most), got {k}",
    )
    need(
        cfg.pretrain.health_check_interval_s > 0,
        "pretrain.health_check_interval_s",
        f"must be > 0 seconds (Ray's default is 2), got {cfg.pretrain.health_check_interval_s}",
    )
    need(
        cfg.cluster.node_health_check_ms >= 0,
        "cluster.node_health_check_ms",
        f"must be >= 0 ms (0 = Ray's defaults), got {cfg.cluster.node_health_check_ms}",
    )
    need(
        cfg.cluster.standby_nodes >= 0,
        "cluster.standby_nodes",
        f"must be >= 0 idle worker pods (0 = none), got {cfg.cluster.standby_nodes}",
    )
    need(
        cfg.pretrain.spare_workers >= 0,
        "pretrain.spare_workers",
        f"must be >= 0 idle processes per rank (0 = off), got {cfg.pretrain.spare_workers}",
    )
    need(
        cfg.pretrain.spare_keep_alive_s >= 2,
        "pretrain.spare_keep_alive_s",
        f"must be >= 2 seconds, got {cfg.pretrain.spare_keep_alive_s}",
    )
    need(0.0 <= cfg.continual.replay_fraction < 1.0, "continual.replay_fraction", "must be in [0, 1)")
    ratios = cfg.continual.replay_ratios
    need(
        all(isinstance(v, (int, float)) and v >= 0 for v in ratios.values()) and sum(ratios.values()) < 1.0,
        "continual.replay_ratios",
        f"fractions must be >= 0 and sum to less than 1 (the rest of each batch is the new corpus), got {ratios}",
    )
    for stage in ("pretrain", "continual"):
        order = getattr(cfg, stage).order
        need(order in {"random", "quality"}, f"{stage}.order", f"must be 'random' or 'quality', got {order!r}")
    need(cfg.continual.probe_every >= 0, "continual.probe_every", "must be >= 0 (0 = use continual.probes)")
    need(cfg.continual.probes >= 1, "continual.probes", f"must be >= 1, got {cfg.continual.probes}")
    need(cfg.continual.probe_density >= 1, "continual.probe_density", "must be >= 1 (1 = uniform)")
    r = cfg.resilience
    need(r.scheme in {"xor", "rs"}, "resilience.scheme", f"must be xor or rs, got {r.scheme!r}")
    need(r.k >= 1, "resilience.k", f"must be >= 1, got {r.k}")
    need(r.m >= 1, "resilience.m", f"must be >= 1, got {r.m}")
    need(
        r.scheme != "xor" or r.m == 1,
        "resilience.m",
        f"xor parity has exactly one parity shard; set m=1 or scheme=rs (got m={r.m})",
    )
    need(r.snapshot_every >= 1, "resilience.snapshot_every", "must be >= 1")
    need(r.persist_every >= 1, "resilience.persist_every", "must be >= 1")
    need(r.max_in_flight >= 1, "resilience.max_in_flight", "must be >= 1")
    need(r.keeper_memory_mb > 0, "resilience.keeper_memory_mb", "must be > 0")
    need(r.hang_factor == 0 or r.hang_factor >= 2, "resilience.hang_factor", "must be 0 (off) or >= 2")
    need(r.hang_min_seconds > 0, "resilience.hang_min_seconds", "must be > 0")
    need(
        cfg.pretrain.launcher in {"ray", "rayjob"},
        "pretrain.launcher",
        f"must be ray or rayjob, got {cfg.pretrain.launcher!r}",
    )
    need(cfg.storage.s3_max_attempts >= 1, "storage.s3_max_attempts", "must be >= 1 (1 = no retry)")
    need(cfg.storage.s3_backoff_seconds >= 0, "storage.s3_backoff_seconds", "must be >= 0")
    need(cfg.storage.s3_timeout_seconds > 0, "storage.s3_timeout_seconds", "must be > 0")
    need(cfg.cluster.gpus_per_worker_pod >= 1, "cluster.gpus_per_worker_pod", "must be >= 1")
    need(cfg.cluster.step_retries >= 0, "cluster.step_retries", f"must be >= 0, got {cfg.cluster.step_retries}")
    need(cfg.continual.quiet_seconds >= 0, "continual.quiet_seconds", "must be >= 0 (0 = no quiet period)")
    need(
        cfg.register.lease_seconds > 0,
        "register.lease_seconds",
        "must be > 0 (a lease nobody can break blocks registers)",
    )
    need(cfg.register.lease_wait_seconds >= 0, "register.lease_wait_seconds", "must be >= 0")
    need(cfg.cluster.step_retry_window_hours >= 1, "cluster.step_retry_window_hours", "must be >= 1")
    need(
        0.0 < cfg.evaluate.preference_heldout_fraction <= cfg.align.pref_heldout_fraction,
        "evaluate.preference_heldout_fraction",
        f"must be in (0, align.pref_heldout_fraction={cfg.align.pref_heldout_fraction}]: a larger share would score "
        f"pairs alignment trains on; got {cfg.evaluate.preference_heldout_fraction}",
    )
    gate = cfg.evaluate.gate
    need(gate.z >= 0, "evaluate.gate.z", f"must be >= 0 (0 = no noise margin), got {gate.z}")
    need(bool(gate.primary.strip()), "evaluate.gate.primary", "must name an evaluation metric, e.g. heldout_perplexity")
    for guard in gate.guards:
        need(
            isinstance(guard, str) and re.match(GUARD_PATTERN, guard) is not None,
            "evaluate.gate.guards",
            f"{guard!r} is not '<metric> <op> <value>' with op drop<=, <= or >=; "
            "e.g. 'lmforge_arithmetic_exact_match drop<=0.05' or 'quantize_perplexity_delta_pct <=10'",
        )
    q = cfg.quantize
    need(
        q.method in QUANTIZE_METHODS,
        "quantize.method",
        f"must be one of {', '.join(QUANTIZE_METHODS)}, got {q.method!r}",
    )
    need(1 <= q.bits <= 8, "quantize.bits", f"must be in 1..8, got {q.bits}")
    need(q.group_size >= 0, "quantize.group_size", f"must be >= 0 (0 = one scale per row), got {q.group_size}")
    need(q.llm_int8_threshold >= 0, "quantize.llm_int8_threshold", "must be >= 0 (0 = no outlier decomposition)")
    for b in q.sweep_bits:
        need(isinstance(b, int) and 1 <= b <= 8, "quantize.sweep_bits", f"bit widths must be in 1..8, got {b!r}")
    for g in q.sweep_group_sizes:
        need(isinstance(g, int) and g >= 0, "quantize.sweep_group_sizes", f"must be ints >= 0, got {g!r}")
    if cfg.storage.uri:
        need(
            cfg.storage.uri.startswith(("s3://", "file://")),
            "storage.uri",
            f"must start with s3:// or file://, got {cfg.storage.uri!r}",
        )


def _validate_schedule(sec: Any, name: str) -> None:
    """The schedule's phases must fit in the steps (wsd: warmup, then at least one stable step, then the decay)."""
    if sec.schedule not in SCHEDULES:
        raise ConfigError(f"{name}.schedule: must be one of {', '.join(SCHEDULES)}, got {sec.schedule!r}")
    if sec.decay_shape not in DECAY_SHAPES:
        raise ConfigError(f"{name}.decay_shape: must be one of {', '.join(DECAY_SHAPES)}, got {sec.decay_shape!r}")
    if sec.average not in AVERAGES:
        raise ConfigError(f"{name}.average: must be one of {', '.join(AVERAGES)}, got {sec.average!r}")
    if sec.average in ("uniform", "weighted"):
        if sec.average_every < 1 or sec.average_last_k < 1:
            raise ConfigError(f"{name}.average_every and {name}.average_last_k: must be >= 1")
        if sec.average_every * (sec.average_last_k - 1) >= sec.steps:
            raise ConfigError(
                f"{name}.average_last_k: {sec.average_last_k} snapshots every {name}.average_every="
                f"{sec.average_every} steps span more than {name}.steps={sec.steps}; lower one of them"
            )
    if sec.average == "ema" and not 0.0 <= sec.ema_decay < 1.0:
        raise ConfigError(f"{name}.ema_decay: must be in [0, 1) (0 = fitted to the run), got {sec.ema_decay}")
    if sec.publish_branch and sec.publish_branch not in sec.branch_at:
        branches = ", ".join(["0 (the final decay)", *(str(s) for s in sec.branch_at)])
        raise ConfigError(
            f"{name}.publish_branch={sec.publish_branch} names no branch of this run; the branches that exist are "
            f"{branches} ({name}.branch_at={sec.branch_at}); set {name}.publish_branch to one of them, or add "
            f"{sec.publish_branch} to {name}.branch_at"
        )
    if sec.branch_at and sec.schedule != "wsd":
        raise ConfigError(f"{name}.branch_at: decay branches need {name}.schedule=wsd, got {sec.schedule!r}")
    if sec.schedule != "wsd":
        return
    if not 0.0 < sec.decay_fraction <= 1.0:
        raise ConfigError(f"{name}.decay_fraction: must be in (0, 1], got {sec.decay_fraction}")
    decay = max(1, round(sec.steps * sec.decay_fraction))
    if sec.warmup_steps + decay > sec.steps:
        raise ConfigError(
            f"{name}.decay_fraction: warmup ({name}.warmup_steps={sec.warmup_steps}) plus the decay "
            f"({decay} steps = {sec.decay_fraction} x {name}.steps={sec.steps}) do not fit in the steps; "
            f"lower {name}.decay_fraction or {name}.warmup_steps, or raise {name}.steps"
        )
    stable = range(sec.warmup_steps, sec.steps - decay)
    outside = [step for step in sec.branch_at if step not in stable]
    if outside:
        raise ConfigError(
            f"{name}.branch_at: steps {outside} are not in the stable phase [{stable.start}, {stable.stop}) "
            f"({name}.warmup_steps to the start of the final decay); branch from a step in it"
        )


# --------------------------------------------------------------------------- loading


def load_config(profile: str = "tiny", overrides: typing.Iterable[str] = ()) -> LifecycleConfig:
    """Build the config from a profile string and ``key=value`` overrides.

    ``profile`` names one profile (``tiny``), a YAML path, or several of either joined by ``+``
    (``1b+cluster``): they are merged left to right, section by section, so an overlay such as
    ``cluster`` sets only the keys it names and a later profile wins on a key both set. Overrides
    apply last. ``run.profile`` records the whole string (a path by its file stem).
    """
    raw: dict = {}
    for name in _profile_parts(profile):
        _merge(raw, _read_profile(name, profile))
    raw.setdefault("run", {})["profile"] = PROFILE_SEPARATOR.join(
        Path(name).stem if _is_path(name) else name for name in _profile_parts(profile)
    )
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. pretrain.steps=50")
        _set_path(raw, key.strip().split("."), yaml.safe_load(value) if value.strip() else "")
    return from_dict(LifecycleConfig, raw)


def _profile_parts(profile: str) -> list[str]:
    parts = [p.strip() for p in profile.split(PROFILE_SEPARATOR)]
    if not all(parts):
        raise ConfigError(
            f"profile {profile!r} has an empty part; join profile names or YAML paths with "
            f"'{PROFILE_SEPARATOR}', e.g. small+cluster"
        )
    return parts


def _is_path(name: str) -> bool:
    return Path(name).suffix in (".yaml", ".yml")


def _read_profile(name: str, whole: str) -> dict:
    """One profile's YAML as a dict, its keys and value types checked (errors name the profile)."""
    where = f"profile {name!r}" + (f" (in {whole!r})" if name != whole else "")
    path = Path(name) if _is_path(name) else PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError(f"{where} not found at {path}; known profiles: {', '.join(known)}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {path} must be a mapping of sections, got {type(data).__name__}")
    try:
        _check_tree(LifecycleConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{where} ({path}): {e}") from e
    return data


def _merge(into: dict, other: dict, prefix: str = "") -> None:
    """Merge ``other`` into ``into``: sections key by key, any other value (a list, a dict-valued
    key such as ``cluster.node_selector``) replaced whole, so a later profile never leaves a mix."""
    for key, value in other.items():
        if _is_section(prefix + key):
            _merge(into.setdefault(key, {}), value or {}, f"{prefix}{key}.")
        else:
            into[key] = value


def _is_section(path: str) -> bool:
    """Whether ``a.b`` names a nested config section (merged), not a dict-valued key (replaced)."""
    cls: Any = LifecycleConfig
    for part in path.split("."):
        hint = typing.get_type_hints(cls).get(part)
        if not dataclasses.is_dataclass(hint):
            return False
        cls = hint
    return True


def _set_path(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {k!r} is a value, not a section")
    node[keys[-1]] = value


def from_dict(cls: type, raw: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking every key and type."""
    _check_keys(cls, raw, prefix)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def _check_tree(cls: type, raw: dict, prefix: str = "") -> None:
    """Check keys and value types of a partial tree (one profile) without building a config."""
    _check_keys(cls, raw, prefix)
    hints = typing.get_type_hints(cls)
    for name, value in raw.items():
        if dataclasses.is_dataclass(hints[name]):
            _check_tree(hints[name], value or {}, f"{prefix}{name}.")
        else:
            _coerce(value, hints[name], prefix + name)


def _check_keys(cls: type, raw: Any, prefix: str) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    known = [f.name for f in fields(cls)]
    for key in raw:
        if prefix + key in RENAMED:
            raise ConfigError(RENAMED[prefix + key])
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"unknown key {prefix + key!r}{hint}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    if typing.get_args(hint) == (int,) and typing.get_origin(hint) is list:
        # list[int] (step lists): accept "60,90", [60, 90] or a single 60
        items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
        try:
            return [int(v) for v in items if str(v).strip()]
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a list of integers (e.g. 60,90), got {value!r}") from None
    if isinstance(hint, types.GenericAlias) or hint is list:
        hint = list
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept what Python accepts as a float.
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if hint is list and isinstance(value, str):
        # Fault specs put ',' inside one item (node_loss@step=6,node=2), so such lists split on ';'.
        sep = ";" if "@" in value else ","
        return [v.strip() for v in value.split(sep) if v.strip()]
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


# --------------------------------------------------------------------------- introspection


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts (for logging and for the run report)."""
    return dataclasses.asdict(cfg)


def versioned_dict(cfg: Any) -> dict:
    """Only the fields that change a stage's result: the input to its content hash."""
    out = {}
    for f in fields(cfg):
        if not f.metadata.get("versioned", True):
            continue
        value = getattr(cfg, f.name)
        out[f.name] = versioned_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"pretrain.steps": 200, ...}`` for MLflow params."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def describe(cls: type = LifecycleConfig, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Every key with its type, default and documentation, for ``lmforge config``."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(describe(hint, f"{prefix}{f.name}."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((prefix + f.name, getattr(hint, "__name__", str(hint)), default, f.metadata.get("doc", "")))
    return rows


def resolve_home(cfg: LifecycleConfig) -> Path:
    """The absolute local working directory of this run."""
    return Path(cfg.run.home).expanduser().resolve()
