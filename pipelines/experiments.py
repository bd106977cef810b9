"""``lmforge experiment continual``: the seeds' continual-pretraining comparisons, as a table and plots.

Every arm is the same path a pipeline takes: curate the old corpus (``curate.source``), pretrain a
base on it, curate the new corpus (``continual.source``) with the base's tokenizer, then one
``continual`` step per arm with the arm's overrides on top of the run's. Each is a normal
content-addressed stage (:func:`components.common.stage.run_stage`), so a repeated experiment reuses
every finished step and only runs what changed; the base and both corpora are shared by all arms.

Arms (the seeds' claims they test, in ``CLAIMS``):

- ``rewarm`` (the default continual step: warmup + cosine, 10% replay) vs ``constant_no_rewarm``
  (the base's final LR, from ``pretrain.*`` by :func:`base_final_lr`, no warmup, no decay): Gupta et al. 2023;
- ``replay_0`` / ``replay_5`` / ``replay_25``: Ibrahim et al. 2024;
- ``wsd`` vs ``rewarm`` (cosine) at the same token budget: Hägele et al. 2024;
- ``constant_ema`` (constant LR, EMA weights) vs ``rewarm`` (decay): Sanyal et al. 2023;
- ``subset_fl_25`` / ``subset_random_25`` (a quarter of the new corpus, facility location vs random),
  and ``subset_fl_25`` vs ``rewarm`` (all of it): INGENIOUS 2023;
- ``quality_decay`` (``continual.order=quality``: the new corpus from its lowest to its highest quality
  score, warmup + cosine) vs ``rewarm`` (random order, same schedule), and ``quality_constant_ema``
  (quality order, constant LR, EMA weights) vs ``constant_ema`` (random order, same): "How learning-rate
  decay wastes your best data in curriculum-based pretraining" (2025): with a decay the best data
  arrives at a tiny LR and the curriculum gains little; without one (and with averaging) it should.

With ``seeds`` > 1 every arm's continual step runs once per seed; the seeds' spread is the noise each
claim's verdict is judged against (:func:`verdicts`: holds / does not / within noise, from the numbers).

``PRESETS`` size the whole experiment: ``tiny`` (the tiny profile as it is, 2 seeds: ``make experiments``)
and ``mini`` (the mini model on the same corpora, 1 seed, steps and probes sized so each configuration
stays within 5 minutes on 2 cores: ``make experiments-mini``).

Writes ``<home>/experiments/continual/`` (``continual-<preset>/`` for a preset other than tiny): ``results.json`` (every run by arm and seed, the verdicts),
``table.md`` (seed means of the final train loss, held-out loss on each corpus after, forgetting,
stability gap, steps to recover, adaptation; then each claim's conditions and verdict) and
``heldout_<corpus>.png`` (every arm's held-out curve of that corpus, first seed).
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from components.common.config import LifecycleConfig, load_config
from components.common.errors import ConfigError
from components.common.log import get_logger

log = get_logger("lmforge.experiment")

#: arm → (continual overrides, curate overrides of the new corpus)
ARMS: dict[str, tuple[list[str], list[str]]] = {
    "rewarm": ([], []),
    # + continual.lr = the base's final LR (base_final_lr: it follows pretrain.*, so a preset or --set keeps it right)
    "constant_no_rewarm": (["continual.schedule=constant", "continual.warmup_steps=0"], []),
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

#: A claim is one or more conditions, each ``(metric, arm a, arm b, relation)`` on the arms' seed means:
#: ``less`` / ``greater`` (a below / above b by more than the noise), ``not_worse`` (a's loss-like metric at
#: most the noise above b's: "matches"), ``no_gain`` (a at most the noise below b: "gains little"). Metrics:
#: ``new`` (held-out loss on the new corpus after), ``forgetting`` and ``stability_gap`` (the worst over the
#: old corpora).
CLAIMS: list[tuple[str, list[tuple[str, str, str, str]]]] = [
    (
        # Gupta et al. 2023: the price of re-warming is the early rise of the old corpus' loss (the gap), which
        # decaying later partly recovers; the final forgetting is in the table, not in the claim
        "re-warming adapts faster than a constant (final) LR, at a larger early rise on the old corpus",
        [("new", "rewarm", "constant_no_rewarm", "less"), ("stability_gap", "rewarm", "constant_no_rewarm", "greater")],
    ),
    (
        "a little replay (5%) cuts forgetting at little cost to adaptation",
        [("forgetting", "replay_5", "replay_0", "less"), ("new", "replay_5", "replay_0", "not_worse")],
    ),
    ("more replay (25%) forgets less still", [("forgetting", "replay_25", "replay_5", "less")]),
    ("WSD matches cosine at the same token budget", [("new", "wsd", "rewarm", "not_worse")]),
    ("weight averaging at a constant LR matches the final decay", [("new", "constant_ema", "rewarm", "not_worse")]),
    (
        "a facility-location 25% subset beats a random 25% subset",
        [("new", "subset_fl_25", "subset_random_25", "less")],
    ),
    ("a facility-location 25% subset matches all the data", [("new", "subset_fl_25", "rewarm", "not_worse")]),
    (
        "under a final decay, quality order (best last) gains little over random",
        [("new", "quality_decay", "rewarm", "no_gain")],
    ),
    (
        "at a constant LR with averaging, quality order beats random",
        [("new", "quality_constant_ema", "constant_ema", "less")],
    ),
]

HOLDS, DOES_NOT, WITHIN_NOISE = "holds", "does not", "within noise"

#: preset → (overrides on top of the profile, default seeds). Measured on 2 cores (one thread per Ray worker),
#: a mini training step of 8 x 128 tokens takes ~2.2 s and a forward pass over 1,024 held-out tokens
#: ~0.7 s: a 60-step continual arm with 20 probes of 2,048 tokens on each of its 2 corpora is ~3.5 min
#: with Ray's start-up, the 100-step base ~4.5 min.
PRESETS: dict[str, tuple[list[str], int]] = {
    "tiny": ([], 2),
    "mini": (
        [
            "model.preset=mini",
            "pretrain.steps=100",
            "pretrain.warmup_steps=10",
            "pretrain.lr=1e-3",
            "pretrain.checkpoint_every=50",
            "continual.steps=60",
            "continual.warmup_steps=6",
            "continual.lr=5e-4",
            "continual.probes=20",
            "evaluate.heldout_max_tokens=2048",
        ],
        1,
    ),
}


def base_final_lr(cfg: LifecycleConfig) -> float:
    """The LR of the base's last pretraining step (``pretrain.lr`` x its schedule at the end): what a
    continual step that does not re-warm carries on with."""
    from components.training.schedule import lr_multiplier, schedule_fields

    p = cfg.pretrain
    return p.lr * lr_multiplier(p.steps - 1, total_steps=p.steps, **schedule_fields(p))


def arm_overrides(name: str, cfg: LifecycleConfig) -> list[str]:
    """The continual overrides of arm ``name`` under the run's config ``cfg`` (``ARMS`` plus what derives from ``cfg``)."""
    derived = [f"continual.lr={base_final_lr(cfg)!r}"] if name == "constant_no_rewarm" else []
    return [*ARMS[name][0], *derived]


def run_experiment(
    profile: str,
    overrides: list[str],
    home: Path,
    only: list[str] | None = None,
    seeds: int = 1,
    name: str = "continual",
) -> dict[str, Any]:
    """Run the arms (all, or ``only``) ``seeds`` times and write the table and plots; returns the results by arm.

    The table and plots go to ``<home>/experiments/<name>``. Repeat ``i`` runs each arm's continual step
    with ``run.seed`` + ``i``: the order of the new corpus and the replay draws change; the base model,
    the corpora, the subsets and the held-out windows do not, so the spread between seeds is the noise
    of the comparisons the claims make. Repeat 0 is the run's own seed, so a one-seed experiment reuses
    the steps of a many-seed one and the other way round.
    """
    unknown = sorted(set(only or ()) - set(ARMS))
    if unknown:
        raise ConfigError(f"experiment arms {', '.join(unknown)} unknown; choose from {', '.join(ARMS)}")
    if seeds < 1:
        raise ConfigError(f"experiment --seeds: must be >= 1, got {seeds}")
    base = [*overrides, f"run.home={home}"]
    cfg = load_config(profile, base)
    arms = {arm: (arm_overrides(arm, cfg), ARMS[arm][1]) for arm in (only or ARMS)}
    old = _curate(profile, base, cfg.curate.source, tokenizer_from=None)
    pretrained = _pretrain(profile, base, old)
    results: dict[str, Any] = {arm: {"overrides": c + u, "runs": []} for arm, (c, u) in arms.items()}
    for i in range(seeds):  # seed-major: a partial experiment has every arm at least once
        seed = cfg.run.seed + i
        for arm, (continual_overrides, curate_overrides) in arms.items():
            started = time.time()
            new = _curate(profile, [*base, *curate_overrides], cfg.continual.source, tokenizer_from=old)
            run = [*base, *continual_overrides, f"run.seed={seed}"]
            pointer, summary = _continual(profile, run, pretrained, new, old)
            results[arm]["runs"].append(
                {
                    "seed": seed,
                    "model_uri": pointer["uri"],
                    # the step's own run time (a reused step reports the run that made it)
                    "seconds": round(summary["metrics"].get("stage_seconds", time.time() - started), 1),
                    "metrics": summary["metrics"],
                    "corpora": summary["corpora"],
                    "heldout_curves": summary["heldout_curves"],
                }
            )
            log.info("experiment: %s seed %d done (%.0fs)", arm, seed, results[arm]["runs"][-1]["seconds"])
    out = home / "experiments" / name
    write_results(results, out)
    return results


def write_results(results: dict[str, Any], out: Path) -> None:
    """``results.json`` (with the verdicts), ``table.md`` and one held-out plot per corpus into ``out``."""
    from components.report.plots import curve_png

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"arms": results, "verdicts": verdicts(results)}, indent=2))
    (out / "table.md").write_text(table(results))
    corpora = sorted({label for r in results.values() for label in r["runs"][0]["heldout_curves"]})
    for label in corpora:  # the first seed's curves: one line per arm stays readable
        curves = {arm: r["runs"][0]["heldout_curves"][label] for arm, r in results.items()}
        (out / f"heldout_{label}.png").write_bytes(curve_png(curves, f"held-out loss on {label}", "loss"))


def arm_metrics(result: dict[str, Any]) -> dict[str, list[float]]:
    """Every numeric metric of an arm, one value per seed, plus ``new`` (held-out loss on the new corpus)."""
    runs = result["runs"]
    new = runs[0]["corpora"]["new"]
    out: dict[str, list[float]] = {}
    for run in runs:
        m = {**run["metrics"], "new": run["metrics"][f"heldout_loss_after/{new}"], "seconds": run["seconds"]}
        for key, value in m.items():
            out.setdefault(key, []).append(float(value))
    return out


def noise(results: dict[str, Any], metric: str) -> float | None:
    """Two standard errors of a difference of two arms' seed means of ``metric``, or None with one seed.

    The seed-to-seed variance is pooled over every arm that ran more than once (each arm's own spread
    is a handful of values; the arms differ in schedule, not in how noisy a seed is).
    """
    per_arm = [arm_metrics(r)[metric] for r in results.values()]
    spreads = [statistics.variance(values) for values in per_arm if len(values) > 1]
    if not spreads:
        return None
    n = min(len(values) for values in per_arm if len(values) > 1)
    return 2.0 * math.sqrt(2.0 * statistics.fmean(spreads) / n)


def condition_verdict(delta: float, relation: str, tolerance: float) -> str:
    """One condition's verdict from ``delta`` = a − b and the noise ``tolerance`` (0 without one)."""
    if relation in ("less", "greater"):
        signed = -delta if relation == "less" else delta  # > 0: the claimed direction
        if abs(delta) <= tolerance:
            return WITHIN_NOISE
        return HOLDS if signed > 0 else DOES_NOT
    if relation == "not_worse":  # a loss-like metric: a may be lower, or higher by at most the noise
        return HOLDS if delta <= tolerance else DOES_NOT
    if relation == "no_gain":  # a may be higher, or lower by at most the noise
        return HOLDS if delta >= -tolerance else DOES_NOT
    raise ValueError(f"unknown relation {relation!r}")


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each claim whose arms all ran: its conditions' numbers and verdicts, and the claim's verdict.

    A claim holds when every condition does, does not when any condition goes the other way by more
    than the noise, and is within noise otherwise.
    """
    means = {arm: {k: statistics.fmean(v) for k, v in arm_metrics(r).items()} for arm, r in results.items()}
    out = []
    for claim, conditions in CLAIMS:
        if not all(a in results and b in results for _, a, b, _ in conditions):
            continue
        checked = []
        for metric, a, b, relation in conditions:
            tolerance = noise(results, metric)
            delta = means[a][metric] - means[b][metric]
            verdict = condition_verdict(delta, relation, tolerance or 0.0)
            checked.append(
                {"metric": metric, "a": a, "b": b, "relation": relation, "a_mean": means[a][metric],
                 "b_mean": means[b][metric], "delta": delta, "noise": tolerance, "verdict": verdict}
            )  # fmt: skip
        found = {c["verdict"] for c in checked}
        verdict = DOES_NOT if DOES_NOT in found else HOLDS if found == {HOLDS} else WITHIN_NOISE
        out.append({"claim": claim, "conditions": checked, "verdict": verdict})
    return out


def _mean(values: list[float], fmt: str) -> str:
    """The seed mean, and ± the seeds' standard deviation when there are several."""
    text = format(statistics.fmean(values), fmt)
    return text if len(values) == 1 else f"{text} ±{statistics.stdev(values):.3f}"


def table(results: dict[str, Any]) -> str:
    """The comparison table (Markdown; seed means ± standard deviation) and each claim's verdict."""
    first = next(iter(results.values()))["runs"][0]
    old, new = first["corpora"]["old"], first["corpora"]["new"]
    seeds = max(len(r["runs"]) for r in results.values())
    head = ["arm", "final train loss", *(f"held-out {c}" for c in [*old, new])]
    head += [f"forgetting {c}" for c in old] + [f"gap {c}" for c in old] + [f"recover {c}" for c in old]
    head += [f"adaptation {new}", "s"]
    lines = [f"{seeds} seed(s) per arm; cells are seed means (± standard deviation over seeds).", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, r in results.items():
        m = arm_metrics(r)
        row = [arm, _mean(m["final_loss"], ".3f")]
        row += [_mean(m[f"heldout_loss_after/{c}"], ".3f") for c in [*old, new]]
        row += [_mean(m[f"forgetting/{c}"], "+.3f") for c in old] + [_mean(m[f"stability_gap/{c}"], ".3f") for c in old]
        row += [_mean(m[f"recovery_steps/{c}"], ".0f") for c in old]
        row += [_mean(m[f"adaptation/{new}"], ".3f"), f"{statistics.fmean(m['seconds']):.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| claim | condition | a | b | a − b | noise (2 SE) | verdict |", "|---|---|---|---|---|---|---|"]
    for v in verdicts(results):
        for i, c in enumerate(v["conditions"]):
            tolerance = "n/a (1 seed)" if c["noise"] is None else f"{c['noise']:.3f}"
            lines.append(
                f"| {v['claim'] if i == 0 else ''} | {c['metric']} {c['a']} {c['relation']} {c['b']} | "
                f"{c['a_mean']:.3f} | {c['b_mean']:.3f} | {c['delta']:+.3f} | {tolerance} | {c['verdict']} |"
            )
        lines.append(f"| | **claim** | | | | | **{v['verdict']}** |")
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
    fingerprint = source_fingerprint(source, resolve_source(source, store), store)
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
