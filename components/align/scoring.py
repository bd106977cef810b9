"""How a policy ranks a preference pair: the log-probability it gives each response.

A policy *prefers* the chosen response when ``log p(chosen | prompt) > log p(rejected | prompt)``
(sums over the response tokens, end-of-turn marker included, as the chat template renders them).
This is the held-out preference accuracy DPO must raise; it needs no reference model, so it can be
measured before training, when the policy and DPO's reference are still the same model.
"""

from __future__ import annotations

from components.align.preference_data import prompt_turns
from components.common.preferences import PreferencePair


def response_logprob(model, tokenizer, turns: list[dict], response: str) -> float:
    """``log p(response | turns)`` under ``model`` (sum over the assistant turn's tokens)."""
    import torch

    prompt = tokenizer.apply_chat_template(turns, add_generation_prompt=True)["input_ids"]
    full = tokenizer.apply_chat_template([*turns, {"role": "assistant", "content": response}])["input_ids"]
    device = next(model.parameters()).device
    ids = torch.tensor([full], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return float(logps[len(prompt) - 1 :].sum())


def preference_accuracy(model, tokenizer, pairs: list[PreferencePair]) -> dict[str, float]:
    """Share of ``pairs`` whose chosen response the policy gives the higher log-probability, and the
    mean log-probability margin (chosen - rejected), in nats."""
    was_training = model.training
    model.eval()
    wins, margins = 0, []
    for pair in pairs:
        turns = prompt_turns(pair.prompt)
        margin = response_logprob(model, tokenizer, turns, pair.chosen) - response_logprob(
            model, tokenizer, turns, pair.rejected
        )
        margins.append(margin)
        wins += margin > 0
    model.train(was_training)
    return {"accuracy": wins / len(pairs), "margin": sum(margins) / len(margins)}
