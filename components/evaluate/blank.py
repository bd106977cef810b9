"""Blank-perplexity scoring of multiple-choice tasks (BOSE's *Blank-ppl*), run through lm-eval.

lm-eval scores a multiple-choice item by the log-likelihood of each option *given* the prompt:
``acc`` picks the option with the highest summed log-probability, ``acc_norm`` the highest per
character. BOSE (Luan et al., ACL Findings 2025) argues that early in pretraining this is unstable
and proposes *Blank-ppl*: write the item as a text with a blank, fill each option into the blank,
and pick the option whose **whole filled-in text** has the lowest perplexity. The prompt's tokens
count too, so the choice rewards an option that makes the passage read well, not only an option
that is likely on its own.

How it maps onto an lm-eval task. The shipped clozes (``lmforge_shakespeare_cloze``/``_order``) are
already blank-shaped: the blank is the speech's next line, so the filled text of option ``c`` is the
task's own prompt (``doc_to_text`` plus its few-shot context, exactly as lm-eval builds it), its
``target_delimiter`` and ``c``. For any multiple-choice task :func:`blank_task` derives a task
``<task>_blank`` from the task's own config whose requests are ``("", filled text)`` log-likelihoods
(lm-eval scores an empty context from the model's prefix token, so every token of the text counts),
and whose ``process_results`` picks the lowest-perplexity text. lm-eval then does batching,
``limit``, seeding and the standard error of the mean, as for every other score.

Perplexity per byte, not per token: ``process_results`` sees log-likelihoods, not token counts, and
lm-eval keeps its scores tokenizer-independent (its rolling-perplexity tasks report
``byte_perplexity`` for the same reason). Within one item and one tokenizer the two normalisations
differ only by the options' bytes-per-token; the ranking of a whole text by ``exp(-ll / bytes)``
is the BOSE rule with the text's length measured in bytes.

Metrics (flattened by :mod:`components.evaluate.harness` as ``<task>/blank_acc``):
``blank_acc`` (the lowest-perplexity text is the gold one, with lm-eval's closed-form stderr) and
``blank_ppl`` (the per-byte perplexity of the gold text, averaged over items; lower is better).
"""

from __future__ import annotations

import math
from typing import Any

from components.common.errors import ConfigError

#: Suffix of the derived task's name (``lmforge_shakespeare_order`` → ``lmforge_shakespeare_order_blank``).
SUFFIX = "_blank"
METRICS = ("blank_acc", "blank_ppl")


def check_blank_tasks(blank_tasks: list[str], tasks: list[str], manager) -> None:
    """Raise ``ConfigError`` naming ``evaluate.blank_tasks`` unless each is a known multiple-choice task.

    Only the task index is read (the YAML's ``output_type``): no model, no data set is loaded.
    """
    known = sorted(manager.all_tasks)
    unknown = [t for t in blank_tasks if t not in known]
    if unknown:
        raise ConfigError(
            f"evaluate.blank_tasks: unknown task(s) {', '.join(map(repr, unknown))}; "
            f"the shipped tasks are: {', '.join(known)}"
        )
    for task in blank_tasks:
        output_type = output_type_of(task, manager)
        if output_type != "multiple_choice":
            mc = [t for t in known if output_type_of(t, manager) == "multiple_choice"]
            raise ConfigError(
                f"evaluate.blank_tasks: {task!r} is a {output_type} task, not multiple_choice: there are no "
                f"options to fill into a blank; the multiple-choice tasks are: {', '.join(mc)}"
            )


def output_type_of(task: str, manager) -> str:
    """The ``output_type`` of a task in ``manager``'s index (its YAML), without building the task."""
    entry = manager.task_index[task]
    cfg = getattr(entry, "cfg", None) or {}
    return cfg.get("output_type", "?")


def blank_task(task: str, manager):
    """The lm-eval task ``<task>_blank``: ``task``'s data, prompt and options, scored by blank perplexity."""
    from lm_eval.api.task import ConfigurableTask

    base = manager.load([task])["tasks"][task]
    cfg = base.config.to_dict(keep_callable=True)
    cfg["task"] = task + SUFFIX
    cfg["metric_list"] = [
        {"metric": "blank_acc", "aggregation": "mean", "higher_is_better": True},
        {"metric": "blank_ppl", "aggregation": "mean", "higher_is_better": False},
    ]
    # A callable process_results makes lm-eval skip its metric registry lookup for these names;
    # the class below overrides process_results itself.
    cfg["process_results"] = _unused

    class BlankPerplexityTask(ConfigurableTask):
        """``task`` with each request the whole filled-in text, scored from the model's prefix token."""

        def construct_requests(self, doc: dict, ctx: str, **kwargs):
            from lm_eval.api.instance import Instance

            # ctx is the prompt exactly as lm-eval built it (description, few-shot examples, the item)
            kwargs.pop("apply_chat_template", None)
            kwargs.pop("chat_template", None)
            texts = [f"{ctx}{self.config.target_delimiter}{c}" for c in self.doc_to_choice(doc)]
            self._texts[_doc_key(doc)] = texts
            return [
                Instance(request_type="loglikelihood", doc=doc, arguments=("", text), idx=i, **kwargs)
                for i, text in enumerate(texts)
            ]

        def process_results(self, doc: dict, results) -> dict[str, float]:
            texts = self._texts[_doc_key(doc)]
            return score_item([r[0] for r in results], texts, self.doc_to_target(doc), self.doc_to_choice(doc))

    task_obj = BlankPerplexityTask(config=cfg)
    task_obj._texts = {}
    return task_obj


def score_item(lls: list[float], texts: list[str], gold: Any, choices: list[str]) -> dict[str, float]:
    """``blank_acc`` and ``blank_ppl`` of one item from the log-likelihoods of its filled-in texts."""
    if isinstance(gold, str):
        gold = choices.index(gold)
    per_byte = [-ll / max(1, len(t.encode("utf-8"))) for ll, t in zip(lls, texts, strict=True)]
    pred = min(range(len(per_byte)), key=per_byte.__getitem__)
    return {"blank_acc": float(pred == gold), "blank_ppl": math.exp(per_byte[gold])}


def _unused(doc, results):  # pragma: no cover - replaced by BlankPerplexityTask.process_results
    raise AssertionError("BlankPerplexityTask.process_results handles blank scoring")


def _doc_key(doc: dict) -> str:
    """A document's identity across construct_requests and process_results (lm-eval may copy the dict)."""
    import json

    return json.dumps(doc, sort_keys=True, default=str)
