"""Online DPO's judges: who scores the policy's samples, and on which prompts (``align.judge``).

A judge owns its prompts as well as its scores, because the two come together: an exact-answer
verifier needs problems with a known answer, a reward model needs prompts like those it was trained
on. Both expose the same three things to :func:`components.align.online.online_dpo`:

- ``items``, ``heldout``: the training prompts and the held-out ones (whatever object the judge
  needs); ``turns(item)`` the chat turns the policy answers;
- ``score(items, samples)``: one number per sample, higher is better.

``verifier``: the generated arithmetic task (:mod:`components.common.arithmetic`, its content-keyed
train/held-out split); a sample scores 1 when its answer is exact, else 0. ``reward_model``: the
Bradley–Terry reward model trained first on ``align.preferences`` (:mod:`.reward`); the prompts are
the training side of those pairs (held-out pairs stay held out), a sample scores the model's scalar.

Online DPO pairs the best-scored sample with the worst wherever a prompt's samples differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from components.align.chat import prompt_messages
from components.align.preference_data import prompt_turns
from components.common.arithmetic import Problem, verify

#: Tokens a sample may run to: an arithmetic answer is a few digits; a reply to a dialogue, a sentence.
VERIFIER_MAX_NEW_TOKENS = 12
REWARD_MODEL_MAX_NEW_TOKENS = 32
#: Held-out prompts scored before and after (greedy), at most.
HELDOUT_PROMPTS = 64


@dataclass
class VerifierJudge:
    """Exact answers on generated arithmetic problems."""

    items: list[Problem]
    heldout: list[Problem]
    name: str = "verifier"
    max_new_tokens: int = VERIFIER_MAX_NEW_TOKENS

    def turns(self, item: Problem) -> list[dict[str, str]]:
        return prompt_messages(item.prompt)

    def score(self, items: list[Problem], samples: list[list[str]]) -> list[list[float]]:
        return [[float(verify(s, p.answer)) for s in answers] for p, answers in zip(items, samples, strict=True)]


@dataclass
class RewardModelJudge:
    """A trained Bradley–Terry reward model scoring replies to preference prompts."""

    model: Any
    tokenizer: Any
    items: list = field(default_factory=list)  # PreferencePair
    heldout: list = field(default_factory=list)
    name: str = "reward_model"
    max_new_tokens: int = REWARD_MODEL_MAX_NEW_TOKENS

    def turns(self, item) -> list[dict[str, str]]:
        return prompt_turns(item.prompt)

    def score(self, items: list, samples: list[list[str]]) -> list[list[float]]:
        from components.align.reward import score

        return [
            score(self.model, self.tokenizer, self.turns(item), answers)
            for item, answers in zip(items, samples, strict=True)
        ]


def best_and_worst(items: list, samples: list[list[str]], scores: list[list[float]], turns) -> list[tuple]:
    """``[(prompt turns, chosen, rejected)]``: for every prompt whose samples' scores differ, the
    first best-scored sample against the first worst-scored one."""
    pairs = []
    for item, answers, judged in zip(items, samples, scores, strict=True):
        hi, lo = max(judged), min(judged)
        if hi > lo:
            pairs.append((turns(item), answers[judged.index(hi)], answers[judged.index(lo)]))
    return pairs
