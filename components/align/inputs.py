"""The data sets the align steps read, as (name, source, digest): logged to MLflow and hashed.

A step's output is addressed by its config and input digests (:mod:`components.common.stage`). A
data set given as a path is part of the config, but its *contents* are not: an SFT file edited in
place would silently reuse the old model. So each data set the steps read (the SFT records, the
preference pairs, the generated arithmetic prompts) gets a content digest here; the component passes
the digests to ``run_stage(extra=...)`` (the content address) and the stage logs each as an MLflow
input (name, digest, source), the lineage a registered model walks back through.

Files are digested with :func:`components.common.sources.source_fingerprint` (names and content
digests of every file under the source, local or s3://). Generated prompts have no file: their
digest is a hash of everything that fixes them (generator version, seed, digits, operators, count).

The digests here address the step (one per data set); what MLflow records is per file, through the
platform's lineage helpers (:func:`components.common.lineage.log_raw_files`), so the lineage walker
(``lmforge lineage``) reaches every file a model was aligned on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from components.common import arithmetic
from components.common.config import LifecycleConfig
from components.common.sources import resolve_source, source_fingerprint

# Bump when components/common/arithmetic.py changes what a seed generates.
ARITHMETIC_VERSION = "arithmetic/v1"
#: The keys of ``align`` that change the SFT step's result (the rest belong to the preference step).
SFT_KEYS = (
    "source",
    "prompt_field",
    "response_field",
    "max_examples",
    "steps",
    "batch_size",
    "lr",
    "warmup_steps",
    "max_len",
    "heldout_fraction",
    "packing",
    "lora_r",
    "lora_alpha",
    "arithmetic_steps",
    "arithmetic_batch_size",
    "arithmetic_lr",
    "arithmetic_weight_decay",
    "num_workers",
    "use_gpu",
)


@dataclass(frozen=True)
class DataInput:
    name: str
    source: str
    digest: str


def source_store(cfg: LifecycleConfig, source: str):
    """An object store able to read ``source`` when it is an s3:// prefix, else None."""
    if not source.startswith("s3://"):
        return None
    from components.common.artifacts import store_options
    from components.common.storage import open_store

    return open_store(source, **store_options(cfg))


def file_input(name: str, source: str, store=None) -> DataInput:
    files = resolve_source(source, store)
    # One file: its resolved path (MLflow shows where it is); several: the source that names them all.
    return DataInput(name, files[0] if len(files) == 1 else source, source_fingerprint(source, files, store))


def arithmetic_input(cfg: LifecycleConfig) -> DataInput:
    """The generated arithmetic prompts of expert iteration and online DPO."""
    a = cfg.align
    spec = {
        "generator": ARITHMETIC_VERSION,
        "seed": cfg.run.seed,
        "digits": list(a.task_digits),
        "operators": "+-",
        "prompts_per_round": a.prompts_per_round,
        "rounds": a.rounds,
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    # MLflow resolves sources by URI scheme; the generator's own file is the honest source of generated data.
    return DataInput("arithmetic", arithmetic.__file__, digest)


def sft_arithmetic_input() -> DataInput:
    """The generated problems of the SFT arithmetic phase (``align.arithmetic_steps``): every
    training-side single-digit addition, fixed by the generator alone (no seed, no count)."""
    spec = {
        "generator": ARITHMETIC_VERSION,
        "listing": "every_problem",
        "split": "train",
        **arithmetic.SINGLE_DIGIT_ADDITION,
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return DataInput("arithmetic_sft", arithmetic.__file__, digest)


def sft_inputs(cfg: LifecycleConfig, store=None) -> list[DataInput]:
    read = [file_input("sft", cfg.align.source, store)]
    return [*read, sft_arithmetic_input()] if cfg.align.arithmetic_steps else read


def preference_inputs(cfg: LifecycleConfig, store=None) -> list[DataInput]:
    """What the preference step reads for ``align.method`` (nothing for ``none``)."""
    a = cfg.align
    inputs = []
    rm_judge = a.method == "online_dpo" and a.judge == "reward_model"
    if a.method == "dpo" or a.reward_model or rm_judge:
        inputs.append(file_input("preferences", a.preferences, store))
    if a.method == "expert_iteration" or (a.method == "online_dpo" and not rm_judge):
        inputs.append(arithmetic_input(cfg))
    return inputs


def address(inputs: list[DataInput]) -> dict[str, str]:
    """``name → digest``, for ``run_stage(extra=...)``."""
    return {i.name: i.digest for i in inputs}


def sft_config(cfg: LifecycleConfig) -> dict:
    """The SFT step's share of ``align`` (hashed instead of the whole section, so changing
    ``align.beta`` does not retrain SFT)."""
    return {k: getattr(cfg.align, k) for k in SFT_KEYS}


def log_inputs(inputs: list[DataInput], store=None) -> None:
    """Record what the step read in the active MLflow run, as raw inputs the lineage walker reaches:
    every file of a file data set with its own digest (named ``<data set>/<file name>``), and
    generated prompts as one input whose digest fixes them (the generator's file as its source)."""
    from pathlib import Path

    from components.common import lineage

    for i in inputs:
        if i.source == arithmetic.__file__:
            source = Path(i.source).resolve().as_uri()
            lineage.log_input(
                name=f"generated/{i.name}", digest=i.digest, source_uri=source, context=lineage.RAW_CONTEXT
            )
        else:
            lineage.log_raw_files(lineage.digest_files(resolve_source(i.source, store), store), role=i.name)
