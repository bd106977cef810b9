"""Sampling a policy's answers to chat prompts, batched, and greedy exact match on arithmetic.

Expert iteration and online DPO both sample N responses per prompt from the current policy; the
verifier (:mod:`components.common.arithmetic`) or the reward model then judges them. Prompts are
left-padded so every row's answer starts at the same position, and generation stops at the
end-of-turn marker (:func:`components.align.chat.stop_token_ids`).
"""

from __future__ import annotations

from components.align.chat import as_turns, stop_token_ids
from components.common.arithmetic import Problem, verify

MAX_NEW_TOKENS = 12  # an arithmetic answer is a few digits and the end-of-turn marker


def sample(
    model,
    tokenizer,
    prompts: list[str] | list[list[dict[str, str]]],
    *,
    n: int,
    temperature: float,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[list[str]]:
    """``n`` responses to each prompt (a question, or chat turns), sampled at ``temperature``; greedy,
    once, when it is 0."""
    import torch

    texts = [tokenizer.apply_chat_template(as_turns(p), add_generation_prompt=True, tokenize=False) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    batch = batch.to(next(model.parameters()).device)
    greedy = temperature <= 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None,
            top_k=None,
            num_return_sequences=1 if greedy else n,
            eos_token_id=stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        )
    model.train(was_training)
    decoded = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    per = 1 if greedy else n
    return [[d.strip() for d in decoded[i * per : (i + 1) * per]] for i in range(len(prompts))]


def exact_match(model, tokenizer, problems: list[Problem], batch_size: int = 64) -> float:
    """Share of ``problems`` the policy answers correctly, greedy (the verifier judges)."""
    right = 0
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        answers = sample(model, tokenizer, [p.prompt for p in chunk], n=1, temperature=0)
        right += sum(verify(a[0], p.answer) for a, p in zip(answers, chunk, strict=True))
    return right / len(problems)
