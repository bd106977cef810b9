"""The promotion gate: a primary metric that must really improve, and guards that must all hold.

A release engineer promotes a model when it is better on what matters and no worse, beyond noise, on
everything else. So the gate (``evaluate.gate``) has three parts:

- **primary**: the new model must beat the champion on this metric by more than the noise margin
  ``z * sqrt(se_new^2 + se_champion^2)``. A difference inside the margin is a tie, and a tie keeps
  the incumbent: two equally good models should not flip the alias back and forth on noise.
- **guards**, each ``'<metric> <op> <value>'``:
  ``drop<=x`` — the metric may be worse than the champion's by at most ``x`` (worse beyond the
  tolerance *and* the noise margin fails, so noise alone never fails a guard); ``<=y`` / ``>=y`` —
  an absolute bound on the new model's value (continual forgetting, quantization perplexity delta),
  failed only when the value is beyond the bound by more than ``z * se_new``.
- **noise**: every metric ``m`` may come with ``m_stderr`` (lm-eval reports one for every task score;
  perplexity gets one from per-document losses, :class:`components.training.heldout.HeldoutStats`);
  a metric without one is treated as exact.

The first model (no champion) is promoted if its absolute guards hold; ``drop<=`` guards have
nothing to compare with and pass. The champion's numbers come either from re-evaluating it in the
same run, or from its stored tags when the evaluation config digest matches (the caller decides,
see :mod:`components.evaluate.run`); the verdict records which.

Directions: lm-eval's ``higher_is_better`` for task metrics; by name for the rest (perplexity,
loss, forgetting, stderr and deltas lower is better; everything else higher), see :func:`lower_is_better`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from components.common.config import GUARD_PATTERN, GateConfig
from components.common.errors import ConfigError

#: Name fragments of metrics where smaller is better (checked when no explicit direction is known).
LOWER_IS_BETTER = ("perplexity", "loss", "forgetting", "stability_gap", "stderr", "delta", "size_", "seconds", "bits")


def lower_is_better(metric: str, directions: dict[str, bool] | None = None) -> bool:
    """Whether a smaller value of ``metric`` is better; ``directions`` (metric → higher is better) wins."""
    if directions and metric in directions:
        return not directions[metric]
    return any(word in metric for word in LOWER_IS_BETTER)


@dataclass(frozen=True)
class Guard:
    metric: str
    op: str  # "drop<=", "<=" or ">="
    value: float

    @classmethod
    def parse(cls, text: str) -> Guard:
        m = re.match(GUARD_PATTERN, text)
        if m is None:
            raise ConfigError(f"evaluate.gate.guards: {text!r} is not '<metric> <op> <value>' (op: drop<=, <=, >=)")
        return cls(metric=m["metric"], op=m["op"], value=float(m["value"]))

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


def rule_metrics(gate: GateConfig) -> list[tuple[str, str]]:
    """(config key, metric) for the primary metric and every guard."""
    return [("evaluate.gate.primary", gate.primary)] + [
        ("evaluate.gate.guards", Guard.parse(g).metric) for g in gate.guards
    ]


def check_rules(gate: GateConfig, available: set[str], *, prefixes: tuple[str, ...] = ()) -> None:
    """Raise ``ConfigError`` naming the key and the choices if a rule names a metric not produced.

    ``prefixes``: metric families known only after the model ran (``<task>_`` of each task); a rule
    metric starting with one passes this early check and is checked exactly once the numbers exist.
    """
    for key, metric in rule_metrics(gate):
        if metric in available or (prefixes and metric.startswith(prefixes)):
            continue
        choices = sorted(m for m in available if not m.endswith("_stderr"))
        families = [f"{p}<metric>" for p in prefixes]
        raise ConfigError(
            f"{key}: metric {metric!r} is not produced by this evaluation; choose one of: "
            f"{', '.join(choices + families) or '(none)'}"
        )


@dataclass(frozen=True)
class Scores:
    """One model's numbers as the gate sees them."""

    metrics: dict[str, float]
    directions: dict[str, bool] = field(default_factory=dict)  # metric → higher is better (from lm-eval)
    version: str = ""  # registry version ('' for the new model)
    source: str = "evaluated"  # evaluated | re-evaluated | stored

    def value(self, metric: str) -> float:
        return float(self.metrics[metric])

    def stderr(self, metric: str) -> float:
        """``<metric>_stderr``; for a filtered lm-eval metric ``<task>_<m>_<filter>`` lm-eval's own
        name ``<task>_<m>_stderr_<filter>``; 0 when neither exists (the number is taken as exact)."""
        names = [f"{metric}_stderr"] + [f"{metric[:i]}_stderr{metric[i:]}" for i, ch in enumerate(metric) if ch == "_"]
        se = next((self.metrics[n] for n in names if n in self.metrics), 0.0)
        return 0.0 if se is None or math.isnan(float(se)) else float(se)


@dataclass
class RuleResult:
    rule: str
    metric: str
    new: float
    champion: float | None
    margin: float
    passed: bool
    note: str


@dataclass
class Verdict:
    promote: bool
    reason: str
    rules: list[RuleResult]
    champion_version: str
    champion_source: str
    z: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Verdict:
        return cls(**{**data, "rules": [RuleResult(**r) for r in data["rules"]]})


def _worse_by(metric: str, new: float, old: float, directions: dict[str, bool]) -> float:
    """How much worse ``new`` is than ``old`` (negative when better), in the metric's own units."""
    return new - old if lower_is_better(metric, directions) else old - new


def decide(gate: GateConfig, new: Scores, champion: Scores | None) -> Verdict:
    """The gate's verdict for ``new`` against ``champion`` (None: no champion yet)."""
    check_rules(gate, set(new.metrics))
    if champion is not None:
        missing = [m for _, m in rule_metrics(gate) if m not in champion.metrics and _is_relative(gate, m)]
        if missing:
            raise ConfigError(
                f"evaluate.gate: the champion v{champion.version} ({champion.source}) has no {', '.join(missing)}; "
                "its evaluation predates the rule: re-evaluate it (change any evaluate setting) or drop the rule"
            )
    directions = {**(champion.directions if champion else {}), **new.directions}
    rules: list[RuleResult] = []

    # Primary: improve beyond noise, or (first model) nothing to beat.
    p = gate.primary
    if champion is None:
        rules.append(RuleResult(f"primary {p}", p, new.value(p), None, 0.0, True, "no champion yet"))
    else:
        margin = gate.z * math.hypot(new.stderr(p), champion.stderr(p))
        gain = -_worse_by(p, new.value(p), champion.value(p), directions)
        if math.isnan(new.value(p)):
            ok, note = False, "new value is NaN"
        elif gain > margin:
            ok, note = True, f"better by {gain:.4g} > noise {margin:.4g}"
        elif gain > 0:
            ok, note = False, f"better by {gain:.4g}, within noise {margin:.4g}: a tie keeps the incumbent"
        else:
            ok, note = False, f"not better (by {gain:.4g}; noise {margin:.4g})"
        rules.append(RuleResult(f"primary {p}", p, new.value(p), champion.value(p), margin, ok, note))

    for text in gate.guards:
        g = Guard.parse(text)
        value = new.value(g.metric)
        if g.op == "drop<=":
            if champion is None:
                rules.append(RuleResult(str(g), g.metric, value, None, 0.0, True, "no champion to compare with"))
                continue
            margin = gate.z * math.hypot(new.stderr(g.metric), champion.stderr(g.metric))
            worse = _worse_by(g.metric, value, champion.value(g.metric), directions)
            ok = worse <= g.value + margin
            note = f"worse by {worse:.4g} (tolerance {g.value:g} + noise {margin:.4g})"
            rules.append(RuleResult(str(g), g.metric, value, champion.value(g.metric), margin, ok, note))
        else:
            margin = gate.z * new.stderr(g.metric)
            excess = value - g.value if g.op == "<=" else g.value - value
            ok = not math.isnan(value) and excess <= margin
            note = f"{value:.4g} {g.op} {g.value:g}" + (f" (noise {margin:.4g})" if margin else "")
            champ = champion.metrics.get(g.metric) if champion else None
            rules.append(RuleResult(str(g), g.metric, value, champ, margin, ok, note))

    failed = [r for r in rules if not r.passed]
    promote = not failed
    if champion is None:
        reason = (
            "no champion yet: promoted" if promote else f"first model, but {failed[0].rule} failed: {failed[0].note}"
        )
    elif promote:
        reason = f"promoted over champion v{champion.version}: {rules[0].note}"
    else:
        reason = f"champion v{champion.version} stays: " + "; ".join(f"{r.rule}: {r.note}" for r in failed)
    return Verdict(
        promote=promote,
        reason=reason,
        rules=rules,
        champion_version=champion.version if champion else "",
        champion_source=champion.source if champion else "",
        z=gate.z,
    )


def _is_relative(gate: GateConfig, metric: str) -> bool:
    """Whether a rule on ``metric`` compares with the champion (the primary and ``drop<=`` guards)."""
    return metric == gate.primary or any(
        Guard.parse(g).metric == metric and Guard.parse(g).op == "drop<=" for g in gate.guards
    )


def verdict_markdown(verdict: Verdict) -> str:
    """The verdict as a Markdown table: each rule, both values, the noise margin and pass/fail."""

    def fmt(x: float | None) -> str:
        return "—" if x is None else f"{x:.6g}"

    head = "PROMOTE" if verdict.promote else "KEEP CHAMPION"
    champ = (
        f"champion v{verdict.champion_version} ({verdict.champion_source} numbers)"
        if verdict.champion_version
        else "no champion yet"
    )
    lines = [
        f"## Promotion gate: {head}",
        "",
        f"{verdict.reason}. Compared with {champ}; noise margin z = {verdict.z:g}.",
        "",
        "| rule | new | champion | noise margin | result | why |",
        "|---|---|---|---|---|---|",
    ]
    for r in verdict.rules:
        mark = "pass" if r.passed else "**fail**"
        lines.append(f"| `{r.rule}` | {fmt(r.new)} | {fmt(r.champion)} | {r.margin:.4g} | {mark} | {r.note} |")
    return "\n".join(lines) + "\n"
