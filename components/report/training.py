"""The report's sections for the stages that make the model: curation, pretraining, continual
pretraining, and alignment (SFT, then the preference step).

Each function takes the stage's completion summary (the marker the stage wrote, see
:func:`components.common.stage.run_stage`) and returns a :class:`~components.report.blocks.Section`.
Keys a summary lacks (an older stage, a method that does not report them) are skipped, never shown
empty: a section says what the stage measured, in pipeline terms, and folds the rest away.
"""

from __future__ import annotations

import math
from typing import Any

from components.common.storage import join
from components.report.blocks import Figure, Section, Table, Text, cell_text, facts, number_text
from components.report.metrics import Metrics, seconds_text
from components.report.plots import curve_png


def _pct(part: float | None, whole: float | None) -> str | None:
    if part is None or not whole:
        return None
    return f"{number_text(part)} ({100 * part / whole:.1f}%)"


def _rules(rules: dict[str, int]) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in sorted(rules.items(), key=lambda kv: -kv[1]))


def curate_section(key: str, title: str, s: dict, uri: str) -> Section:
    """Counts of the curation run and a link to its data card (the card has the details)."""
    m = Metrics(s.get("metrics"))
    card = join(uri, "data_card.html") if uri else s.get("data_card", "")
    blocks: list = [
        Text(
            f"Source `{s.get('source', '?')}`. The [data card]({card}) shows every step with examples of "
            "what was dropped, languages, lengths, duplicates and the lineage of each shard."
        )
    ]
    read = m.get("records_read")
    blocks.append(
        facts(
            [
                ("records read", read),
                ("records kept", _pct(m.get("records_kept"), read)),
                ("quarantined (malformed)", m.get("quarantined") or None),
                ("corrupt files", m.get("corrupt_files") or None),
                ("training split", _tokens(m.get("train_documents"), m.get("train_tokens"))),
                ("held-out split", _tokens(m.get("heldout_documents"), m.get("heldout_tokens"))),
                ("synthetic (rephrased) documents", m.get("synthetic_documents") or None),
                ("time", seconds_text(m.get("stage_seconds"))),
            ]
        )
    )
    m.matching(r"dropped_.*|.*_modified|files|synthetic_tokens")  # the steps table shows them
    steps = s.get("counts") or []
    changed = [st for st in steps if st.get("dropped") or st.get("modified")]
    if changed:
        rows = [
            (
                st["name"].replace("_", " "),
                st["input"],
                st["kept"],
                _pct(st["dropped"], st["input"]) if st["dropped"] else 0,
                _rules({**st.get("rules", {}), **{f"modified {k}": v for k, v in st.get("modified", {}).items()}}),
            )
            for st in changed
        ]
        blocks.append(Table(("step", "documents in", "kept", "dropped", "why"), rows))
        idle = [st["name"].replace("_", " ") for st in steps if st not in changed]
        if idle:
            blocks.append(Text(f"Steps that changed nothing: {', '.join(idle)}."))
    rest = m.rest()
    return Section(key, title, blocks + ([rest] if rest else []))


def _tokens(documents: float | None, tokens: float | None) -> str | None:
    if tokens is None:
        return None
    return f"{cell_text(documents)} documents, {cell_text(tokens)} tokens" if documents is not None else None


def _training_facts(m: Metrics) -> list[tuple[str, Any]]:
    loss_ppl = m.get("heldout_loss")
    return [
        ("parameters", m.get("parameters")),
        ("optimizer steps", m.get("steps")),
        ("tokens seen", m.get("train_tokens_seen")),
        ("throughput", f"{m.get('tokens_per_second'):,.0f} tokens/s" if m.get("tokens_per_second") else None),
        ("training loss", m.change("initial_loss", "final_loss")),
        (
            "held-out loss (perplexity)",
            f"{number_text(loss_ppl)} ({number_text(math.exp(loss_ppl))})" if loss_ppl is not None else None,
        ),
        ("resumed from step", m.get("resumed_from_step") or None),
        ("time", seconds_text(m.get("stage_seconds"))),
    ]


def pretrain_section(s: dict) -> Section:
    """Loss curve, throughput, WSD branches and the recoveries from worker failures."""
    m = Metrics(s.get("metrics"))
    blocks: list = [facts(_training_facts(m))]
    branches = m.matching(r"branch_\d+/heldout_loss")
    if branches:
        rows = [(f"decay from step {k.split('/')[0].removeprefix('branch_')}", v) for k, v in branches.items()]
        blocks.append(Table(("WSD decay branch", "held-out loss"), rows))
    if s.get("loss_curve"):
        blocks.append(
            Figure("loss_pretrain.png", curve_png({"train loss": s["loss_curve"]}, "pretraining"), "pretraining loss")
        )
    if "recoveries" in s:
        blocks.append(_recoveries(s["recoveries"]))
        m.mark("recoveries")
    rest = m.rest()
    return Section("pretrain", "Pretraining", blocks + ([rest] if rest else []))


def _recoveries(records: list[dict]) -> Section:
    if not records:
        return Section("pretrain-recoveries", "Recoveries", [Text("No worker failed: nothing had to be recovered.")], 3)
    rows = [
        (
            r.get("tier"),
            r.get("version"),
            r.get("failed_at_step"),
            r.get("steps_lost"),
            seconds_text(r.get("recovery_seconds")),
            "; ".join(r.get("fallbacks") or []) or None,
        )
        for r in records
    ]
    head = (
        "tier",
        "restored step",
        "failed at step",
        "steps lost",
        "failure → training again",
        "tiers that failed first",
    )
    return Section("pretrain-recoveries", f"Recoveries ({len(records)})", [Table(head, rows)], 3)


def _corpora(s: dict, m: Metrics) -> list[tuple[str, str]]:
    """(corpus, role) of continual pretraining, old corpora first."""
    corpora = s.get("corpora") or {}
    out = [(c, "earlier") for c in corpora.get("old", [])]
    if corpora.get("new"):
        out.append((corpora["new"], "new"))
    known = {c for c, _ in out}
    for k in m.values:  # per-corpus numbers of a corpus the summary does not list (older summaries)
        if "/" in k and k.split("/", 1)[1] not in known:
            known.add(k.split("/", 1)[1])
            out.append((k.split("/", 1)[1], "—"))
    return out


def continual_section(s: dict) -> Section:
    """Stability-gap curves and, per corpus, held-out loss before/after with forgetting or adaptation."""
    m = Metrics(s.get("metrics"))
    replays = s.get("replays") or []
    replay = ", ".join(f"{100 * float(f):.0f}% of `{str(u).rstrip('/').rsplit('/', 1)[-1]}`" for u, f in replays)
    averaging = s.get("averaging")
    blocks: list = [
        facts(
            _training_facts(m)
            + [
                ("replay of earlier data", replay or "none"),
                ("checkpoint averaging", _averaging_text(averaging)),
            ]
        )
    ]
    rows = []
    for corpus, role in _corpora(s, m):
        before, after = m.get(f"heldout_loss_before/{corpus}"), m.get(f"heldout_loss_after/{corpus}")
        recover = m.get(f"recovery_steps/{corpus}")
        rows.append(
            (
                f"{corpus} ({role})",
                before,
                after,
                m.get(f"forgetting/{corpus}"),
                m.get(f"adaptation/{corpus}"),
                m.get(f"stability_gap/{corpus}"),
                None if recover is None else "not recovered" if recover < 0 else recover,
            )
        )
    if rows:
        head = (
            "corpus",
            "held-out loss before",
            "after",
            "forgetting",
            "adaptation",
            "stability gap",
            "steps to recover",
        )
        blocks.append(Table(head, rows))
        blocks.append(
            Text(
                "Forgetting: held-out loss after minus before on an earlier corpus (lower is better). Adaptation: "
                "before minus after on the new corpus (higher is better). Stability gap: the highest held-out loss "
                "during re-warming minus the loss before it."
            )
        )
    # The headline copies (forgetting, adaptation ...) and the old/new names repeat the table.
    m.matching(r"(forgetting|adaptation|stability_gap|probes)|(old|new)_heldout_loss_\w+")
    curves = {"train loss (new corpus)": s.get("loss_curve") or [], **_heldout_curves(s)}
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        png = curve_png(curves, "continual pretraining: training loss and held-out loss per corpus")
        blocks.append(Figure("loss_continual.png", png, "continual pretraining: stability gap curves"))
    rest = m.rest()
    return Section("continual", "Continual pretraining", blocks + ([rest] if rest else []))


def _averaging_text(averaging: Any) -> str:
    if not averaging:
        return "none"
    if isinstance(averaging, dict):
        return ", ".join(f"{k} {number_text(v)}" for k, v in averaging.items() if not isinstance(v, (list, dict)))
    return str(averaging)


def _heldout_curves(s: dict) -> dict[str, list]:
    """Continual's held-out probe curves, one per corpus (runs before per-corpus probes: the old one)."""
    if not s.get("heldout_curves"):
        return {"held-out loss (earlier corpus)": s.get("old_heldout_curve") or []}
    corpora = s.get("corpora", {})
    role = {label: "earlier" for label in corpora.get("old", [])} | {corpora.get("new", ""): "new"}
    return {f"held-out loss: {c} ({role.get(c, 'corpus')})": curve for c, curve in s["heldout_curves"].items()}


def _clip(text: Any, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def align_section(sft: dict | None, prefer: dict | None) -> Section:
    """SFT (loss, held-out answer loss, samples) and the preference step (whatever its method reports)."""
    blocks: list = []
    if sft:
        blocks.append(_sft(sft))
    if prefer:
        blocks.append(_prefer(prefer))
    return Section("align", "Alignment", blocks)


def _sft(s: dict) -> Section:
    m = Metrics(s.get("metrics"))
    blocks: list = [
        facts(
            [
                ("training pairs", m.get("sft_examples")),
                ("held-out pairs", m.get("sft_heldout_examples")),
                ("quarantined (malformed)", m.get("quarantined") or None),
                ("optimizer steps", m.get("steps")),
                ("training loss (answer tokens)", m.change("sft_loss_first", "sft_loss_last")),
                ("held-out answer loss", m.change("sft_heldout_answer_loss_before", "sft_heldout_answer_loss_after")),
                ("time", seconds_text(m.get("stage_seconds"))),
            ]
        )
    ]
    m.mark("sft_train_seconds")
    if s.get("loss_curve"):
        png = curve_png({"SFT loss (answer tokens)": s["loss_curve"]}, "supervised fine-tuning")
        blocks.append(Figure("loss_align.png", png, "SFT loss"))
    samples = s.get("samples") or []
    if samples:
        rows = [
            (_clip(x.get("prompt", "")), _clip(x.get("reference", "")), _clip(x.get("generation", "")))
            for x in samples[:3]
        ]
        blocks.append(Text("Generations after SFT on training prompts (greedy):"))
        blocks.append(Table(("prompt", "reference answer", "model's answer"), rows, kind="text"))
    rest = m.rest()
    return Section("align-sft", "Supervised fine-tuning (SFT)", blocks + ([rest] if rest else []), 3)


METHOD_NAMES = {
    "none": "none (the SFT model passes through)",
    "dpo": "DPO (direct preference optimization)",
    "expert_iteration": "expert iteration (sample, verify, fine-tune)",
    "online_dpo": "online DPO (the policy samples, a judge scores)",
}


def _prefer(s: dict) -> Section:
    m = Metrics(s.get("metrics"))
    method = s.get("method", "?")
    blocks: list = [Text(f"Method: **{METHOD_NAMES.get(method, method)}** (`align.method={method}`).")]
    pairs = facts(
        [
            ("training pairs", m.get("pref_pairs")),
            ("held-out pairs", m.get("pref_heldout_pairs")),
            ("quarantined pairs", m.get("pref_quarantined") or None),
        ]
    )
    if pairs.rows:
        blocks.append(pairs)
    if any(k.startswith("rm_") for k in m.values):
        rm = facts(
            [
                ("held-out accuracy", m.change("rm_heldout_accuracy_before", "rm_heldout_accuracy_after")),
                ("held-out reward margin", m.get("rm_heldout_margin_after")),
                ("loss", m.change("rm_loss_first", "rm_loss_last")),
                ("steps", m.get("rm_steps")),
            ]
        )
        m.matching(r"rm_.*")
        blocks.append(Section("align-reward-model", "Reward model", [rm], 4))
    if method == "dpo":
        blocks.append(
            facts(
                [
                    (
                        "held-out preference accuracy",
                        m.change("dpo_heldout_accuracy_before", "dpo_heldout_accuracy_after"),
                    ),
                    (
                        "held-out log-prob margin (nats)",
                        m.change("dpo_heldout_margin_before", "dpo_heldout_margin_after"),
                    ),
                    ("reward accuracy (last logged batch)", m.get("dpo_reward_accuracy")),
                    ("reward margin (last logged batch)", m.get("dpo_reward_margin")),
                    ("DPO loss", m.change("dpo_loss_first", "dpo_loss_last")),
                    ("steps", m.get("dpo_steps")),
                ]
            )
        )
        m.mark("dpo_pairs", "dpo_heldout_pairs")
        if s.get("loss_curve"):
            blocks.append(Figure("loss_dpo.png", curve_png({"DPO loss": s["loss_curve"]}, "DPO"), "DPO loss"))
    elif method == "expert_iteration" and s.get("rounds"):
        rows = [(0, None, None, m.get("ei_exact_match_before"), m.get("ei_heldout_exact_match_before"))]
        rows += [
            (r["round"], r.get("kept"), r.get("sample_accuracy"), r.get("exact_match"), r.get("heldout_exact_match"))
            for r in s["rounds"]
        ]
        head = (
            "round",
            "verified samples kept",
            "sample accuracy",
            "exact match (training prompts)",
            "held-out exact match",
        )
        blocks.append(Table(head, rows))
        m.matching(r"ei_.*")
    elif method == "online_dpo":
        blocks.append(
            facts(
                [
                    ("updates", m.get("online_updates")),
                    ("pairs trained on", m.get("online_pairs")),
                    (
                        "judge score (first → last quarter)",
                        m.change("online_score_first_quarter", "online_score_last_quarter"),
                    ),
                    ("judge", s.get("judge")),
                    ("held-out exact match", m.change("online_exact_match_before", "online_exact_match_after")),
                    ("held-out judge score", m.change("online_heldout_score_before", "online_heldout_score_after")),
                    (
                        "generation",
                        f"{m.get('online_samples_per_second'):.1f} samples/s"
                        if m.get("online_samples_per_second")
                        else None,
                    ),
                    ("largest staleness (updates)", m.get("online_max_staleness")),
                ]
            )
        )
        rounds = s.get("rounds") or []
        if rounds:
            curves = {"judge score": [[r["step"], r["score"]] for r in rounds]}
            png = curve_png(curves, "online DPO: mean judge score per update", ylabel="score")
            blocks.append(Figure("online_dpo_score.png", png, "online DPO judge score"))
    rest = m.rest()
    return Section("align-prefer", "Preference step", blocks + ([rest] if rest else []), 3)
