"""The models that rephrase: one small interface, two backends.

A :class:`Rephraser` turns a batch of prompts into a batch of completions, ``None`` where a prompt
failed. The HTTP backend never raises for a failed request, because one bad batch or a flaky server
must not sink a curation run (the caller keeps the original text and counts the failure); the local
backend raises, as its errors are bugs or a misconfigured model. Both backends decode greedily, so the
same corpus and model give the same synthetic text (up to GPU kernel nondeterminism on a server), and
a curated dataset stays content-addressable.

- :class:`OpenAIRephraser` talks to an OpenAI-compatible server such as vLLM. ``/v1/completions``
  takes the whole batch in one request (vLLM batches it on the GPU); ``/v1/chat/completions`` takes
  one conversation per request, so the batch is sent as concurrent requests. 408/429/5xx answers and
  connection errors are retried with exponential backoff; a 400-class rejection of a multi-prompt
  request is retried prompt by prompt, so one over-long prompt fails alone. The API key comes from
  the environment and appears only in the Authorization header, never in a log line.
- :class:`HFRephraser` runs a local Hugging Face model directory with ``generate`` on CPU (or GPU).

Hand-written rather than datatrove's ``InferenceRunner`` (0.10): its retry policy is fixed (6 tries,
5 s·2^n apart: minutes per outage, and untestable in seconds), remote endpoints need the ``openai``
client, its output must go through a disk writer, it sends one document per request, and it has no
in-process model backend; this step transforms an in-memory list between two blocks.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from components.common.log import get_logger

log = get_logger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SPLIT_STATUSES = frozenset({400, 413, 422})  # a per-prompt problem (e.g. too long): retry prompts alone
# Models (random or small ones especially) emit stray control bytes; they would fail the curated
# output's "no control characters" expectation for the whole run, so they are dropped here.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Rephraser(Protocol):
    model: str  # recorded in each synthetic document's metadata (lineage)
    retries: int  # requests retried so far (reported in the stage's stats)

    def complete(self, prompts: list[str]) -> list[str | None]:
        """One completion per prompt, ``None`` where it failed or came back empty."""
        ...


def clean_completion(text: str | None) -> str | None:
    if text is None:
        return None
    text = _CONTROL.sub("", text).strip()
    return text or None


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path``: user info and query strings (which may carry secrets) left out."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


class OpenAIRephraser:
    def __init__(
        self,
        endpoint: str,
        model: str,
        *,
        api_key: str | None = None,
        max_new_tokens: int = 512,
        max_retries: int = 4,
        backoff_seconds: float = 1.0,
        timeout_seconds: float = 120.0,
    ) -> None:
        endpoint = endpoint.rstrip("/")
        self.url = endpoint if endpoint.endswith("/completions") else f"{endpoint}/completions"
        self.chat = self.url.endswith("/chat/completions")
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.retries = 0
        self._retries_lock = threading.Lock()  # chat requests run in threads
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:  # the default repr would show the headers, key included
        return f"OpenAIRephraser({redact_url(self.url)!r}, model={self.model!r})"

    def complete(self, prompts: list[str]) -> list[str | None]:
        if self.chat:
            with ThreadPoolExecutor(max_workers=max(1, len(prompts))) as pool:
                return list(pool.map(self._complete_chat, prompts))
        return self._complete_batch(prompts)

    def _complete_batch(self, prompts: list[str]) -> list[str | None]:
        body = {"model": self.model, "prompt": prompts, "max_tokens": self.max_new_tokens, "temperature": 0.0}
        status, answer = self._post(body)
        if answer is None:
            if status in SPLIT_STATUSES and len(prompts) > 1:
                return [self._complete_batch([p])[0] for p in prompts]
            return [None] * len(prompts)
        texts: list[str | None] = [None] * len(prompts)
        for choice in answer.get("choices", []):
            index = choice.get("index", 0)
            if 0 <= index < len(prompts):
                texts[index] = clean_completion(choice.get("text"))
        return texts

    def _complete_chat(self, prompt: str) -> str | None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.max_new_tokens,
            "temperature": 0.0,
        }
        _, answer = self._post(body)
        try:
            return clean_completion(answer["choices"][0]["message"]["content"]) if answer else None
        except (KeyError, IndexError, TypeError):
            log.warning("rephrase: malformed chat answer from %s", redact_url(self.url))
            return None

    def _post(self, body: dict) -> tuple[int | None, dict | None]:
        """POST with retries; returns (last HTTP status or None, parsed JSON answer or None)."""
        import requests

        status: int | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._retries_lock:
                    self.retries += 1
                time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
            try:
                response = requests.post(self.url, json=body, headers=self._headers, timeout=self.timeout_seconds)
            except (requests.ConnectionError, requests.Timeout) as e:
                status, reason = None, type(e).__name__
            else:
                status, reason = response.status_code, response.reason
                if status == 200:
                    try:
                        return status, response.json()
                    except ValueError:
                        reason = "answer is not JSON"
                elif status not in RETRY_STATUSES:
                    log.warning("rephrase: %s rejected a request: HTTP %s %s", redact_url(self.url), status, reason)
                    return status, None
            log.info("rephrase: %s attempt %d failed (%s)", redact_url(self.url), attempt + 1, status or reason)
        log.warning("rephrase: %s failed %d times; giving up on this request", redact_url(self.url), attempt + 1)
        return status, None


class HFRephraser:
    def __init__(self, path: str | Path, *, max_new_tokens: int = 512) -> None:
        from transformers import AutoModelForCausalLM

        from components.common.tokenizer import load_tokenizer

        self.model = str(path)
        self.max_new_tokens = max_new_tokens
        self.retries = 0  # local generation has nothing to retry
        self.tokenizer = load_tokenizer(path)
        self.tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.net = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).eval()

    def complete(self, prompts: list[str]) -> list[str | None]:
        import torch

        if self.tokenizer.chat_template:  # what a chat endpoint would do server-side
            prompts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in prompts
            ]
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(self.net.device)
        with torch.inference_mode():
            out = self.net.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        return [clean_completion(t) for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
