"""Preference accuracy: how often the model prefers the chosen response of a held-out pair.

The pairs are HH-RLHF (or plain ``{prompt, chosen, rejected}``) read and split by
:mod:`components.common.preferences`, the same reader and the same content-keyed split alignment
uses, so only pairs on the held-out side are ever scored and none of them was trained on (with the
same ``heldout_fraction`` as alignment: ``evaluate.preference_heldout_fraction``).

A pair counts as preferred when the summed log-probability of the chosen response given the prompt
exceeds that of the rejected one: the quantity DPO's implicit reward is built from, so an aligned
model and its reference can be compared on the same footing. The standard error is the binomial
one, sqrt(p(1-p)/n), the same form lm-eval reports for an accuracy.
"""

from __future__ import annotations

import math

import torch

from components.common.preferences import PreferencePair, read_preferences, split_preferences


def heldout_pairs(source: str, heldout_fraction: float, max_pairs: int) -> list[PreferencePair]:
    """The held-out side of ``source`` (its first ``max_pairs``; 0 = all), in file order."""
    pairs, _ = read_preferences(source)
    _, heldout = split_preferences(pairs, heldout_fraction)
    return heldout[:max_pairs] if max_pairs else heldout


@torch.no_grad()
def response_logprob(model, tokenizer, prompt: str, response: str, max_len: int) -> float:
    """Summed log-probability of ``response`` after ``prompt`` (the prompt is cut from the left to fit)."""
    device = next(model.parameters()).device
    p_ids = tokenizer.encode(prompt, add_special_tokens=False)
    r_ids = tokenizer.encode(response, add_special_tokens=False)[: max_len - 1]
    p_ids = p_ids[-(max_len - len(r_ids)) :]
    ids = torch.tensor([p_ids + r_ids], device=device)
    logits = model(input_ids=ids[:, :-1]).logits.float().log_softmax(-1)
    targets = ids[:, 1:]
    token_lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[0]
    return float(token_lp[len(p_ids) - 1 :].sum())


def preference_accuracy(model, tokenizer, pairs: list[PreferencePair], *, max_len: int) -> dict[str, float]:
    """``{"acc", "acc_stderr", "pairs"}`` of ``model`` on ``pairs``."""
    wins = sum(
        response_logprob(model, tokenizer, p.prompt, p.chosen, max_len)
        > response_logprob(model, tokenizer, p.prompt, p.rejected, max_len)
        for p in pairs
    )
    n = len(pairs)
    acc = wins / n
    return {"acc": acc, "acc_stderr": math.sqrt(acc * (1 - acc) / n), "pairs": n}
