"""The curation report (``curation_report.json``, rendered by the data card) and the flat MLflow metrics.

Step entries come from datatrove's own per-block stats (``stats.json`` of the per-document stage) in
pipeline order, plus the reader's record counts and the dedup decisions made after the MinHash
stages. Every entry is ``{"name", "input", "kept", "dropped", "rules", "modified"}``; ``rules`` holds
per-reason drop counts (``modified`` per-kind change counts of formatters). Counts chain: a step's
``input`` is the previous step's ``kept``.
"""

from __future__ import annotations

import random

from components.curate.base import step_counts
from components.curate.quarantine import CORRUPT_FILE

MAX_LENGTHS = 100_000
FORMATTERS = ("repair", "normalize", "pii")

# What to change when a step removed everything, keyed by step name.
HINTS = {
    "length": "lower curate.min_chars (now {c.min_chars}) or raise curate.max_chars (now {c.max_chars})",
    "quarantine": "the bad records are in {quarantine}; check the format and curate.text_field (now {c.text_field!r})",
    "language": "check curate.languages (now {c.languages}) and curate.language_threshold (now {c.language_threshold})",
    "gopher_quality": "relax curate.gopher_min_words (now {c.gopher_min_words}) / gopher_min_alpha_ratio or set "
    "curate.gopher_quality=false",
    "gopher_repetition": "raise curate.gopher_top_ngram_max (now {c.gopher_top_ngram_max}) or set "
    "curate.gopher_repetition=false",
    "c4_quality": "lower curate.c4_min_sentences (now {c.c4_min_sentences}) or set curate.c4_terminal_punct=false",
    "fineweb_quality": "raise curate.fineweb_short_line_ratio or set curate.fineweb_quality=false",
    "toxicity": "check curate.toxicity_wordlist (now {c.toxicity_wordlist!r}) and curate.toxicity_max_hits",
    "decontaminate": "the input overlaps the evaluation sets; set curate.decontaminate=false only for a test corpus",
    "dedup": "the input repeats itself or curate.dedup_previous ({c.dedup_previous!r}); nothing new to curate",
}


def read_entry(files: list[dict], quarantine_counts: dict[str, int]) -> dict:
    records = sum(f["records"] for f in files)
    rules = {r: n for r, n in quarantine_counts.items() if r != CORRUPT_FILE}
    dropped = sum(rules.values())
    return {
        "name": "read",
        "input": records,
        "kept": records - dropped,
        "dropped": dropped,
        "rules": rules,
        "modified": {},
    }


def step_entries(names: list[str], stats: list[dict]) -> list[dict]:
    """Report entries for the named per-document blocks (``stats`` is datatrove's ``stats.json``, same order)."""
    entries = []
    for name, s in zip(names, stats, strict=False):
        entry = {"name": name, **step_counts(s, drops=name not in FORMATTERS)}
        unexplained = entry["dropped"] - sum(entry["rules"].values())
        if unexplained > 0:  # a datatrove rule that returns a bare False: count it under the step
            entry["rules"][name] = unexplained
        entries.append(entry)
    return entries


def sampled_lengths(texts: list[str], seed: int) -> list[int]:
    lengths = [len(t) for t in texts]
    return lengths if len(lengths) <= MAX_LENGTHS else random.Random(seed).sample(lengths, MAX_LENGTHS)


def metrics(report: dict, packed: dict) -> dict:
    """Flat ``{name: number}`` for MLflow: per-rule drops, quarantine reasons, tokens and documents."""
    steps = {s["name"]: s for s in report["steps"]}
    m: dict[str, int] = {
        "files": len(report["inputs"]),
        "corrupt_files": sum(1 for f in report["inputs"] if f["error"]),
        "records_read": steps["read"]["input"],
        "records_kept": steps["dedup"]["kept"],
        "quarantined": report["quarantined"],
        "synthetic_documents": report["synthetic"]["documents"],
        "synthetic_tokens": report["synthetic"]["tokens"],
    }
    if sel := report.get("selection"):
        m["selected_documents"] = sel["selected"]
        m["select_candidates"] = sel["candidates"]
    m.update({f"quarantined_{r}": n for r, n in report["quarantine_counts"].items()})
    for step in report["steps"]:
        if step["name"] == "read":
            continue
        for rule, n in step["rules"].items():
            m[f"dropped_{rule}"] = m.get(f"dropped_{rule}", 0) + n
        if step["modified"].get("all"):
            m[f"{step['name']}_modified"] = step["modified"]["all"]
    for split, summary in packed.items():
        m[f"{split}_tokens"] = summary["tokens"]
        m[f"{split}_documents"] = summary["documents"]
    return m


def empty_message(source: str, cfg, steps: list[dict], files: list[dict], quarantine_path) -> str:
    """Why nothing is left: the source, and the step (or quarantine reason) that removed the most."""
    n_files = f"{len(files)} file(s)"
    removals = [
        (n, "quarantine" if s["name"] == "read" else s["name"], r) for s in steps for r, n in s["rules"].items()
    ]
    if not removals:
        corrupt = sum(1 for f in files if f["error"])
        detail = f"; {corrupt} of them corrupt (see {quarantine_path})" if corrupt else ""
        return f"{source}: no records found in {n_files}{detail}"
    n, step, reason = max(removals)
    hint = HINTS.get(step, "check the input data").format(c=cfg.curate, quarantine=quarantine_path)
    read = sum(f["records"] for f in files)
    return (
        f"{source}: no records left after curation ({read} read from {n_files}); the filter that removed the most "
        f"was {step!r} ({reason}: {n}); {hint}"
    )
