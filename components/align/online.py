"""Online DPO, synchronous and asynchronous, with a verifier or a reward model as judge.

Each learner update: take ``align.pref_batch_size`` prompts of the judge (:mod:`.judge`,
``align.judge``: generated arithmetic problems for the verifier, the training side of
``align.preferences`` for the reward model), sample ``align.samples_per_prompt`` answers per
prompt, let the judge score them (the verifier 1 right / 0 wrong, the reward model its scalar),
pair the best-scored answer (chosen) with the worst (rejected) wherever a prompt's scores differ,
and take one DPO step on those pairs against the frozen SFT model as reference:
``−log σ(β · [(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])``, trl's ``sigmoid``
DPO loss written over the batch of fresh pairs (trl's ``DPOTrainer`` wants a fixed dataset, and
its experimental online trainer has no asynchronous mode).

- ``align.staleness = 0`` (synchronous): the learner generates each batch itself with the current
  policy, then trains on it; generation and learning take turns.
- ``align.staleness = s >= 1`` (asynchronous, "Asynchronous RLHF"): generation runs in its own Ray
  actor holding a copy of the policy. While the learner trains on batch t, the actor already samples
  batch t+1, and the learner sends it new weights only when the batch being requested would
  otherwise be more than ``s`` updates old when trained on. Off-policy DPO tolerates that lag, and
  generation and learning overlap. The actor gets the weights through Ray's object store, never a
  path, so it may run on another node.

Reported: ``online_samples_per_second`` (responses generated and judged per second of wall clock,
the whole loop; in asynchronous mode from the moment the generation actor is up, so Ray's start-up
is not counted against it), ``online_max_staleness``, pairs formed, mean judge score of the samples in the
first and last quarter of the updates, and the mean judge score of greedy answers to held-out prompts
before and after (``online_heldout_score_*``; for the verifier also named ``online_exact_match_*``).
The judge used is logged and returned (``"judge"``).
"""

from __future__ import annotations

import time
from typing import Any

from components.align.chat import as_turns
from components.align.judge import HELDOUT_PROMPTS, VERIFIER_MAX_NEW_TOKENS, VerifierJudge, best_and_worst
from components.align.sampling import sample
from components.common.arithmetic import generate
from components.common.config import LifecycleConfig
from components.common.log import get_logger

log = get_logger("lmforge.align")


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Per-pair sigmoid DPO loss from summed response log-probabilities (1-D tensors)."""
    import torch.nn.functional as F

    return -F.logsigmoid(beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)))


def response_logps(model, tokenizer, prompts: list, responses: list[str]):
    """Summed log-probabilities of each response to its prompt (a question or chat turns; chat
    template, end marker included)."""
    import torch

    rows, starts = [], []
    for prompt, response in zip(prompts, responses, strict=True):
        turns = as_turns(prompt)
        head = tokenizer.apply_chat_template(turns, add_generation_prompt=True)["input_ids"]
        full = tokenizer.apply_chat_template([*turns, {"role": "assistant", "content": response}])["input_ids"]
        rows.append(full)
        starts.append(len(head))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    token_logps = torch.log_softmax(logits, dim=-1).gather(2, ids[:, 1:, None])[..., 0]
    positions = torch.arange(width - 1, device=device)[None, :]
    starts_t = torch.tensor(starts, device=device)[:, None]
    lengths = mask.sum(1, keepdim=True)
    # Position p predicts token p+1: the response's tokens are start .. length-1.
    keep = (positions >= starts_t - 1) & (positions < lengths - 1)
    return (token_logps * keep).sum(1)


def make_pairs(judge, items: list, samples: list[list[str]]) -> tuple[list, list[float]]:
    """``([(prompt turns, chosen, rejected)], scores)``: the judge scores every sample (``scores``,
    flat) and each prompt whose samples it scores differently gives one pair, best against worst."""
    scores = judge.score(items, samples)
    return best_and_worst(items, samples, scores, judge.turns), [x for row in scores for x in row]


def verifier_judge(cfg: LifecycleConfig) -> VerifierJudge:
    """The arithmetic task's judge: enough training problems for every update, the held-out ones apart."""
    from components.align.expert import heldout_count, task_room

    a = cfg.align
    digits = (a.task_digits[0], a.task_digits[1])
    wanted = a.pref_steps * a.pref_batch_size
    prompts = generate(min(wanted, task_room(digits, "train")), split="train", seed=cfg.run.seed, digits=digits)
    heldout = generate(heldout_count(digits), split="heldout", seed=cfg.run.seed, digits=digits)
    return VerifierJudge(prompts, heldout)


def heldout_score(judge, model, tokenizer, batch_size: int = 64) -> float:
    """Mean judge score of the policy's greedy answers to the judge's held-out prompts (for the
    verifier: exact match)."""
    items = judge.heldout[:HELDOUT_PROMPTS]
    total = 0.0
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        answers = sample(
            model,
            tokenizer,
            [judge.turns(x) for x in chunk],
            n=1,
            temperature=0,
            max_new_tokens=judge.max_new_tokens,
        )
        total += sum(row[0] for row in judge.score(chunk, answers))
    return total / len(items)


class SamplerActor:
    """A copy of the policy that samples answers; lives in its own Ray worker process."""

    def __init__(self, config: dict, state: dict, tokenizer, seed: int) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.set_num_threads(1)
        torch.manual_seed(seed)
        cfg = AutoConfig.for_model(**config)
        self.model = AutoModelForCausalLM.from_config(cfg)
        self.model.load_state_dict(state)
        self.tokenizer = tokenizer
        self.version = 0

    def set_weights(self, state: dict, version: int) -> None:
        self.model.load_state_dict(state)
        self.version = version

    def ready(self) -> bool:
        """Returns once the actor's process is up and its policy copy loaded (the timing starts after it)."""
        return True

    def sample(
        self, prompts: list, n: int, temperature: float, max_new_tokens: int = VERIFIER_MAX_NEW_TOKENS
    ) -> tuple[list[list[str]], int]:
        samples = sample(
            self.model, self.tokenizer, prompts, n=n, temperature=temperature, max_new_tokens=max_new_tokens
        )
        return samples, self.version


def online_dpo(cfg: LifecycleConfig, model, tokenizer, *, ref_model=None, model_dir=None, judge=None) -> dict[str, Any]:
    """Train ``model`` in place by online DPO for ``align.pref_steps`` updates; see the module docstring.

    ``judge`` scores the samples and owns the prompts (:mod:`.judge`); None = the arithmetic verifier.
    """
    import torch
    from transformers import AutoModelForCausalLM

    a = cfg.align
    if ref_model is None:
        ref_model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True)
    ref_model.eval().requires_grad_(False)
    judge = judge or verifier_judge(cfg)
    log.info("online dpo: judge %s, %d training prompts, %d held out", judge.name, len(judge.items), len(judge.heldout))

    # Fewer prompts than the updates need: then the prompts come round again (with fresh samples
    # each time, as in any online method).
    wanted = a.pref_steps * a.pref_batch_size
    order = [judge.items[i % len(judge.items)] for i in range(wanted)]
    batches = [order[i * a.pref_batch_size : (i + 1) * a.pref_batch_size] for i in range(a.pref_steps)]
    before = heldout_score(judge, model, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=a.pref_lr, weight_decay=0.0)

    def train_on(pairs) -> float | None:
        if not pairs:
            return None
        model.train()
        ps, cs, rs = zip(*pairs, strict=True)
        policy_c = response_logps(model, tokenizer, list(ps), list(cs))
        policy_r = response_logps(model, tokenizer, list(ps), list(rs))
        with torch.no_grad():
            ref_c = response_logps(ref_model, tokenizer, list(ps), list(cs))
            ref_r = response_logps(ref_model, tokenizer, list(ps), list(rs))
        loss = dpo_loss(policy_c, policy_r, ref_c, ref_r, a.beta).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return float(loss.detach())

    started = time.time()
    log_rows, scores_per_step, staleness_seen, n_pairs = [], [], [], 0
    if a.staleness == 0:
        for step, batch in enumerate(batches, start=1):
            samples = sample(
                model,
                tokenizer,
                [judge.turns(x) for x in batch],
                n=a.samples_per_prompt,
                temperature=a.temperature,
                max_new_tokens=judge.max_new_tokens,
            )
            pairs, scores = make_pairs(judge, batch, samples)
            loss = train_on(pairs)
            staleness_seen.append(0)
            scores_per_step.append(sum(scores) / len(scores))
            n_pairs += len(pairs)
            log_rows.append(
                {"step": step, "pairs": len(pairs), "score": scores_per_step[-1], "loss": loss, "staleness": 0}
            )
    else:
        import ray

        from components.common.ray_session import ray_session

        with ray_session(cfg.pretrain.ray_address, num_cpus=2, name="lmforge-online"):
            actor_cls = ray.remote(num_cpus=1)(SamplerActor)
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            actor = actor_cls.remote(model.config.to_dict(), state, tokenizer, cfg.run.seed)
            actor_version = 0
            # Samples/s compares the loops, not Ray's start-up: the clock starts once the actor is up.
            ray.get(actor.ready.remote())
            started = time.time()

            def request(batch):
                return actor.sample.remote(
                    [judge.turns(x) for x in batch], a.samples_per_prompt, a.temperature, judge.max_new_tokens
                )

            in_flight = request(batches[0])
            for step, batch in enumerate(batches, start=1):
                version = step - 1  # learner updates done so far
                samples, generated_with = ray.get(in_flight)
                lag = version - generated_with
                if step < len(batches):
                    # Overlap: the actor samples the next batch while the learner trains on this one. That
                    # batch is trained on at version + 1; refresh the actor first if it would be too old.
                    if version + 1 - actor_version > a.staleness:
                        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                        actor.set_weights.remote(ray.put(state), version)  # Ray runs an actor's calls in order
                        actor_version = version
                    in_flight = request(batches[step])
                pairs, scores = make_pairs(judge, batch, samples)
                loss = train_on(pairs)
                staleness_seen.append(lag)
                scores_per_step.append(sum(scores) / len(scores))
                n_pairs += len(pairs)
                log_rows.append(
                    {"step": step, "pairs": len(pairs), "score": scores_per_step[-1], "loss": loss, "staleness": lag}
                )
            ray.kill(actor)
    seconds = time.time() - started
    after = heldout_score(judge, model, tokenizer)
    quarter = max(1, len(scores_per_step) // 4)
    metrics = {
        "online_updates": len(batches),
        "online_pairs": n_pairs,
        "online_samples_per_second": len(batches) * a.pref_batch_size * a.samples_per_prompt / seconds,
        "online_max_staleness": max(staleness_seen),
        "online_score_first_quarter": sum(scores_per_step[:quarter]) / quarter,
        "online_score_last_quarter": sum(scores_per_step[-quarter:]) / quarter,
        "online_heldout_score_before": before,
        "online_heldout_score_after": after,
    }
    if judge.name == "verifier":  # the verifier's held-out score is greedy exact match
        metrics.update(online_exact_match_before=before, online_exact_match_after=after)
    log.info(
        "online dpo (judge %s, staleness %d): %d updates, %d pairs, %.1f samples/s, judge score %.3f -> %.3f, "
        "held-out judge score %.3f -> %.3f",
        judge.name,
        a.staleness,
        len(batches),
        n_pairs,
        metrics["online_samples_per_second"],
        metrics["online_score_first_quarter"],
        metrics["online_score_last_quarter"],
        before,
        after,
    )
    return {"metrics": metrics, "rounds": log_rows, "judge": judge.name}
