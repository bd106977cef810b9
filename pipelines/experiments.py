"""``lmforge experiment continual``: the seeds' continual-pretraining comparisons, as a table and plots.

Every arm is the same path a pipeline takes: curate the old corpus (``curate.source``), pretrain a
base on it, curate the new corpus (``continual.source``) with the base's tokenizer, then one
``continual`` step per arm with the arm's overrides on top of the run's. Each is a normal
content-addressed stage (:func:`components.common.stage.run_stage`), so a repeated experiment reuses
every finished step and only runs what changed; the base and both corpora are shared by all arms.

Arms (the seeds' claims they test, in ``CLAIMS``):

- ``rewarm`` (the default continual step: warmup + cosine, 10% replay) vs ``constant_no_rewarm``
  (the base's final LR, no warmup, no decay): Gupta et al. 2023;
- ``replay_0`` / ``replay_5`` / ``replay_25``: Ibrahim et al. 2024;
- ``wsd`` vs ``rewarm`` (cosine) at the same token budget: Hägele et al. 2024;
- ``constant_ema`` (constant LR, EMA weights) vs ``rewarm`` (decay): Sanyal et al. 2023;
- ``subset_fl_25`` / ``subset_random_25`` (a quarter of the new corpus, facility location vs random)
  vs ``rewarm`` (all of it): INGENIOUS 2023;
- ``quality_decay`` (``continual.order=quality``: the new corpus from its lowest to its highest quality
  score, warmup + cosine) vs ``rewarm`` (random order, same schedule), and ``quality_constant_ema``
  (quality order, constant LR, EMA weights) vs ``constant_ema`` (random order, same): "How learning-rate
  decay wastes your best data in curriculum-based pretraining" (2025): with a decay the best data
  arrives at a tiny LR and the curriculum gains little; without one (and with averaging) it should.

Writes ``<home>/experiments/continual/``: ``results.json``, ``table.md`` (final train loss,
held-out loss on each corpus after, forgetting, stability gap, steps to recover, adaptation) and
``heldout_<corpus>.png`` (every arm's held-out curve of that corpus).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from components.common.config import LifecycleConfig, load_config

#: arm → (continual overrides, curate overrides of the new corpus)
ARMS: dict[str, tuple[list[str], list[str]]] = {
    "rewarm": ([], []),
    "constant_no_rewarm": (["continual.schedule=constant", "continual.warmup_steps=0", "continual.lr=3e-4"], []),
    "replay_0": (["continual.replay_fraction=0"], []),
    "replay_5": (["continual.replay_fraction=0.05"], []),
    "replay_25": (["continual.replay_fraction=0.25"], []),
    "wsd": (["continual.schedule=wsd"], []),
    "constant_ema": (["continual.schedule=constant", "continual.average=ema"], []),
    "subset_fl_25": ([], ["curate.select_fraction=0.25", "curate.select_method=facility_location"]),
    "subset_random_25": ([], ["curate.select_fraction=0.25", "curate.select_method=random"]),
    "quality_decay": (["continual.order=quality"], []),
    "quality_constant_ema": (["continual.order=quality", "continual.schedule=constant", "continual.average=ema"], []),
}

CLAIMS = [
    ("re-warming adapts faster than a constant (final) LR, at more forgetting", "rewarm", "constant_no_rewarm"),
    ("a little replay (5%) cuts forgetting at little cost to adaptation", "replay_5", "replay_0"),
    ("more replay (25%) forgets less still", "replay_25", "replay_5"),
    ("WSD matches cosine at the same token budget", "wsd", "rewarm"),
    ("weight averaging at a constant LR matches the final decay", "constant_ema", "rewarm"),
    ("a facility-location 25% subset beats a random 25% subset", "subset_fl_25", "subset_random_25"),
    ("under a final decay, quality order (best last) gains little over random", "quality_decay", "rewarm"),
    ("at a constant LR with averaging, quality order beats random", "quality_constant_ema", "constant_ema"),
]


def run_experiment(profile: str, overrides: list[str], home: Path, only: list[str] | None = None) -> dict[str, Any]:
    """Run the arms (all, or ``only``) and write the table and plots; returns the results by arm."""
    unknown = sorted(set(only or ()) - set(ARMS))
    if unknown:
        from components.common.errors import ConfigError

        raise ConfigError(f"experiment arms {', '.join(unknown)} unknown; choose from {', '.join(ARMS)}")
    arms = {name: ARMS[name] for name in (only or ARMS)}
    base = [*overrides, f"run.home={home}"]
    cfg = load_config(profile, base)
    old = _curate(profile, base, cfg.curate.source, tokenizer_from=None)
    pretrained = _pretrain(profile, base, old)
    results: dict[str, Any] = {}
    for name, (continual_overrides, curate_overrides) in arms.items():
        started = time.time()
        new = _curate(profile, [*base, *curate_overrides], cfg.continual.source, tokenizer_from=old)
        pointer, summary = _continual(profile, [*base, *continual_overrides], pretrained, new, old)
        results[name] = {
            "overrides": continual_overrides + curate_overrides,
            "model_uri": pointer["uri"],
            # the step's own run time (a reused step reports the run that made it), plus a subset's curation
            "seconds": round(summary["metrics"].get("stage_seconds", time.time() - started), 1),
            "metrics": summary["metrics"],
            "corpora": summary["corpora"],
            "heldout_curves": summary["heldout_curves"],
        }
    out = home / "experiments" / "continual"
    write_results(results, out)
    return results


def write_results(results: dict[str, Any], out: Path) -> None:
    """``results.json``, ``table.md`` and one held-out plot per corpus into ``out``."""
    from components.report.plots import curve_png

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(table(results))
    corpora = sorted({label for r in results.values() for label in r["heldout_curves"]})
    for label in corpora:
        curves = {arm: r["heldout_curves"][label] for arm, r in results.items() if label in r["heldout_curves"]}
        (out / f"heldout_{label}.png").write_bytes(curve_png(curves, f"held-out loss on {label}", "loss"))


def table(results: dict[str, Any]) -> str:
    """The comparison table (Markdown) and, for each claim whose arms both ran, what the runs say."""
    first = next(iter(results.values()))
    old, new = first["corpora"]["old"], first["corpora"]["new"]
    head = ["arm", "final train loss", *(f"held-out {c}" for c in [*old, new])]
    head += [f"forgetting {c}" for c in old] + [f"gap {c}" for c in old] + [f"recover {c}" for c in old]
    head += [f"adaptation {new}", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, r in results.items():
        m = r["metrics"]
        row = [arm, f"{m['final_loss']:.3f}"]
        row += [f"{m[f'heldout_loss_after/{c}']:.3f}" for c in [*old, new]]
        row += [f"{m[f'forgetting/{c}']:+.3f}" for c in old] + [f"{m[f'stability_gap/{c}']:.3f}" for c in old]
        row += [f"{int(m[f'recovery_steps/{c}'])}" for c in old]
        row += [f"{m[f'adaptation/{new}']:.3f}", f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| claim | arms | new held-out | worst forgetting |", "|---|---|---|---|"]
    for claim, a, b in CLAIMS:
        if a in results and b in results:
            ma, mb = results[a]["metrics"], results[b]["metrics"]
            lines.append(
                f"| {claim} | {a} vs {b} | {ma[f'heldout_loss_after/{new}']:.3f} vs "
                f"{mb[f'heldout_loss_after/{new}']:.3f} | {ma['forgetting']:+.3f} vs {mb['forgetting']:+.3f} |"
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the stages, as pipelines run them


def _stage(stage: str, kind: str, profile: str, overrides: list[str], inputs: dict[str, dict], **kw):
    from components.common.stage import run_stage

    with tempfile.TemporaryDirectory(prefix="lmforge-experiment-") as tmp:
        paths = {}
        for name, pointer in inputs.items():
            paths[name] = str(Path(tmp) / f"{name}.json")
            Path(paths[name]).write_text(json.dumps(pointer))
        return run_stage(
            stage, kind, profile=profile, overrides=overrides, parent_run_id="", input_pointer_paths=paths, **kw
        )


def _curate(profile: str, overrides: list[str], source: str, tokenizer_from: dict | None) -> dict:
    from components.common.artifacts import open_run_store
    from components.common.sources import resolve_source, source_fingerprint
    from components.curate.run import curate

    cfg: LifecycleConfig = load_config(profile, overrides)
    store = open_run_store(cfg)
    fingerprint = source_fingerprint(resolve_source(source, store), store)
    inputs = {"tokenizer": tokenizer_from} if tokenizer_from else {}
    pointer, _ = _stage(
        "curate",
        "datasets",
        profile,
        overrides,
        inputs,
        sections=("curate", "tokenizer"),
        extra={"source": source, "fingerprint": fingerprint},
        fn=lambda ctx: curate(
            ctx.cfg,
            source=source,
            out_dir=ctx.out_dir,
            tokenizer_dir=ctx.inputs["tokenizer"] / "tokenizer" if "tokenizer" in ctx.inputs else None,
            store=ctx.store,
        ),
    )
    return pointer


def _pretrain(profile: str, overrides: list[str], dataset: dict) -> dict:
    from components.pretrain.trainer import pretrain

    pointer, _ = _stage(
        "pretrain",
        "models",
        profile,
        overrides,
        {"dataset": dataset},
        sections=("pretrain", "model"),
        fetch_inputs=False,
        fn=lambda ctx: pretrain(
            ctx.cfg,
            dataset_uri=ctx.input_uri("dataset"),
            output_uri=ctx.out.uri,
            out_dir=ctx.out_dir,
            checkpoint_uri=ctx.scratch_uri("checkpoints"),
            mlflow_run_id=ctx.mlflow_run_id,
        ),
    )
    return pointer


def _continual(profile: str, overrides: list[str], base_model: dict, dataset: dict, old_dataset: dict):
    from components.continual.run import continual

    return _stage(
        "continual",
        "models",
        profile,
        overrides,
        {"base_model": base_model, "dataset": dataset, "old_dataset": old_dataset},
        sections=("continual", "pretrain", "model"),
        fetch_inputs=False,
        fn=lambda ctx: continual(
            ctx.cfg,
            model_uri=ctx.input_uri("base_model", "model"),
            dataset_uri=ctx.input_uri("dataset"),
            old_dataset_uri=ctx.input_uri("old_dataset"),
            output_uri=ctx.out.uri,
            out_dir=ctx.out_dir,
            checkpoint_uri=ctx.scratch_uri("checkpoints"),
            mlflow_run_id=ctx.mlflow_run_id,
        ),
    )
