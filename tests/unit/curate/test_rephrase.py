"""Synthetic rephrasing against a real tiny model: in-process (hf backend) and behind a real
OpenAI-compatible HTTP server on 127.0.0.1 (openai backend) that can fail on purpose."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from components.common.errors import ConfigError
from components.curate.document import Document, content_hash
from components.curate.rephrase import STYLES, load_template, rephrase_documents, split_chunks

SHAKESPEARE = [
    "First Citizen: Before we proceed any further, hear me speak. You are all resolved rather to die than to famish?",
    "MENENIUS: I tell you, friends, most charitable care have the patricians of you. For your wants, your "
    "sufferings in this dearth, you may as well strike at the heaven with your staves as lift them against "
    "the Roman state.",
    "Second Citizen: Would you proceed especially against Caius Marcius? He's a very dog to the commonalty.",
    "MARCIUS: He that will give good words to thee will flatter beneath abhorring. What would you have, you curs?",
    "VOLUMNIA: I pray you, daughter, sing; or express yourself in a more comfortable sort.",
    "CORIOLANUS: You common cry of curs! whose breath I hate as reek o' the rotten fens.",
    "SICINIUS: This is the way to kindle, not to quench. The people are abused; set on.",
]
KEY = "sk-test-0123456789abcdef"


def make_docs(texts: list[str], scores: list[float | None] | None = None) -> list[Document]:
    scores = scores or [None] * len(texts)
    return [
        Document(
            text=t,
            file="mem://corpus.jsonl",
            line=n + 1,
            id=content_hash(t),
            metadata={} if s is None else {"quality_score": s},
        )
        for n, (t, s) in enumerate(zip(texts, scores, strict=True))
    ]


@pytest.fixture(scope="module")
def generate(tiny_model):
    """Greedy completions from the tiny model, one batch at a time (the server's engine)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True, padding_side="left")
    net = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True).eval()
    lock = threading.Lock()

    def run(prompts: list[str], max_tokens: int) -> list[str]:
        with lock, torch.inference_mode():
            batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = net.generate(**batch, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)

    return run


class CompletionServer:
    """A real OpenAI-compatible server (``/v1/completions``, ``/v1/chat/completions``) on 127.0.0.1.

    It answers 503 to its first ``fail_first`` requests (or to all, with ``fail_always``) and 401 to a
    request without ``Bearer <api_key>`` when a key is required. Every request is recorded.
    """

    def __init__(self, generate, *, fail_first: int = 0, fail_always: bool = False, api_key: str | None = None):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(
                    {"t": time.monotonic(), "path": self.path, "body": body, "auth": self.headers.get("Authorization")}
                )
                if api_key and self.headers.get("Authorization") != f"Bearer {api_key}":
                    return self._send(401, {"error": "unauthorized"})
                if fail_always or len(server.requests) <= fail_first:
                    return self._send(503, {"error": "overloaded"})
                if self.path == "/v1/completions":
                    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
                    texts = generate(prompts, body["max_tokens"])
                    return self._send(200, {"choices": [{"index": i, "text": t} for i, t in enumerate(texts)]})
                if self.path == "/v1/chat/completions":
                    text = generate([body["messages"][-1]["content"]], body["max_tokens"])[0]
                    return self._send(
                        200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
                    )
                self._send(404, {"error": f"no route {self.path}"})

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(generate):
    servers: list[CompletionServer] = []

    def start(**kwargs) -> CompletionServer:
        servers.append(CompletionServer(generate, **kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(scope="module")
def style_file(tmp_path_factory):
    """A prompt the random tiny model continues with visible characters (on the shipped templates,
    which end in a newline, it emits only newlines: an empty rephrasing, counted as failed)."""
    path = tmp_path_factory.mktemp("prompts") / "paraphrase.txt"
    path.write_text("{text}\nParaphrase:")
    return path


@pytest.fixture
def openai_config(make_config, style_file):
    def build(url: str, *overrides: str):
        return make_config(
            "curate.rephrase_enabled=true",
            "curate.rephrase_backend=openai",
            f"curate.rephrase_endpoint={url}",
            "curate.rephrase_model=tiny",
            f"curate.rephrase_style={style_file}",
            "curate.rephrase_max_new_tokens=8",
            "curate.rephrase_backoff_seconds=0.01",
            *overrides,
        )

    return build


def synthetic(docs: list[Document]) -> list[Document]:
    return [d for d in docs if d.metadata.get("synthetic")]


def test_hf_backend_adds_marked_synthetic_copies_beside_the_originals(make_config, tiny_model, style_file):
    docs = make_docs(SHAKESPEARE[:4])
    cfg = make_config(
        "curate.rephrase_enabled=true",
        "curate.rephrase_backend=hf",
        f"curate.rephrase_model={tiny_model}",
        f"curate.rephrase_style={style_file}",
        "curate.rephrase_max_new_tokens=8",
        "curate.rephrase_batch_size=2",
    )
    out, stats = rephrase_documents(docs, cfg)
    originals = [d for d in out if not d.metadata.get("synthetic")]
    assert [d.text for d in originals] == SHAKESPEARE[:4]
    copies = synthetic(out)
    assert stats["selected"] == 4 and stats["rephrased"] == len(copies) > 0
    assert stats["rephrased"] + stats["failed"] == 4
    by_id = {d.id: d for d in docs}
    for copy in copies:
        source = by_id[copy.metadata["source_id"]]
        assert copy.metadata["rephrase_style"] == "paraphrase" and copy.metadata["rephrase_model"] == str(tiny_model)
        assert copy.id == content_hash(copy.text) != source.id
        assert (copy.file, copy.line) == (source.file, source.line)
        assert out.index(copy) == out.index(source) + 1
    assert stats["synthetic_chars"] == sum(len(c.text) for c in copies)


def test_only_documents_below_the_quality_threshold_or_unscored_are_rephrased(openai_config, serve):
    server = serve()
    docs = make_docs(SHAKESPEARE[:4], [0.1, 0.9, None, 0.49])
    cfg = openai_config(server.url, "curate.rephrase_below=0.5")
    out, stats = rephrase_documents(docs, cfg)
    sent = [p for r in server.requests for p in r["body"]["prompt"]]
    # lowest score first, unscored last; the 0.9 document is never sent
    assert [next(i for i, t in enumerate(SHAKESPEARE) if t in p) for p in sent] == [0, 3, 2]
    assert stats["eligible"] == stats["selected"] == 3
    assert {d.metadata["source_id"] for d in synthetic(out)} <= {docs[0].id, docs[2].id, docs[3].id}


def test_completion_requests_carry_batches_of_batch_size_prompts(openai_config, serve):
    server = serve()
    cfg = openai_config(server.url, "curate.rephrase_batch_size=3")
    _, stats = rephrase_documents(make_docs(SHAKESPEARE), cfg)
    assert [len(r["body"]["prompt"]) for r in server.requests] == [3, 3, 1]
    assert all(r["body"]["model"] == "tiny" and r["body"]["max_tokens"] == 8 for r in server.requests)
    assert stats["selected"] == 7 and stats["chunks"] == 7


def test_chat_endpoint_gets_one_request_per_prompt(openai_config, serve):
    server = serve()
    cfg = openai_config(server.url + "/chat/completions", "curate.rephrase_batch_size=3")
    out, stats = rephrase_documents(make_docs(SHAKESPEARE[:3]), cfg)
    assert len(server.requests) == 3 and all(r["path"] == "/v1/chat/completions" for r in server.requests)
    assert stats["rephrased"] + stats["failed"] == 3 and len(synthetic(out)) == stats["rephrased"]


def test_transient_503s_are_retried_with_exponential_backoff(openai_config, serve):
    server = serve(fail_first=3)
    cfg = openai_config(server.url, "curate.rephrase_backoff_seconds=0.05", "curate.rephrase_batch_size=8")
    out, stats = rephrase_documents(make_docs(SHAKESPEARE[:3]), cfg)
    times = [r["t"] for r in server.requests]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(server.requests) == 4 and stats["retries"] == 3 and stats["failed"] == 0
    assert all(gap >= 0.05 * 2**n for n, gap in enumerate(gaps))  # 0.05, 0.1, 0.2 s at least
    assert stats["rephrased"] == len(synthetic(out)) > 0


def test_a_permanently_failing_endpoint_leaves_the_originals_and_counts_failures(openai_config, serve):
    server = serve(fail_always=True)
    docs = make_docs(SHAKESPEARE)
    cfg = openai_config(server.url, "curate.rephrase_batch_size=4", "curate.rephrase_max_retries=2")
    out, stats = rephrase_documents(docs, cfg)
    assert out == docs
    assert stats["failed"] == stats["selected"] == 7 and stats["rephrased"] == 0 and stats["synthetic_chars"] == 0
    assert len(server.requests) == 2 * 3 and stats["retries"] == 2 * 2  # two batches, 1 try + 2 retries each


def test_an_unreachable_endpoint_counts_failures_without_raising(openai_config):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    docs = make_docs(SHAKESPEARE[:2])
    cfg = openai_config(f"http://127.0.0.1:{port}/v1", "curate.rephrase_max_retries=1")
    out, stats = rephrase_documents(docs, cfg)
    assert out == docs and stats["failed"] == 2 and stats["retries"] == 1


def test_mix_ratio_caps_synthetic_characters_and_keeps_every_original(openai_config, serve):
    server = serve()
    docs = make_docs(SHAKESPEARE)
    original = sum(len(t) for t in SHAKESPEARE)
    cfg = openai_config(server.url, "curate.rephrase_mix_ratio=0.3")
    out, stats = rephrase_documents(docs, cfg)
    assert [d for d in out if not d.metadata.get("synthetic")] == docs
    assert stats["original_chars"] == original
    assert 0 < stats["synthetic_chars"] == sum(len(d.text) for d in synthetic(out)) <= 0.3 * original


def test_budget_left_by_short_rewrites_is_filled_by_further_rounds(openai_config, serve):
    server = serve()
    cfg = openai_config(server.url, "curate.rephrase_mix_ratio=0.3", "curate.rephrase_batch_size=16")
    _, stats = rephrase_documents(make_docs(SHAKESPEARE), cfg)
    budget, planned, first_round = 0.3 * sum(len(t) for t in SHAKESPEARE), 0, 0
    for t in SHAKESPEARE:  # what fits the budget by source length: the first round's pick
        if planned + len(t) <= budget:
            planned, first_round = planned + len(t), first_round + 1
    assert len(server.requests) >= 2 and stats["selected"] > first_round


def test_a_backend_that_stays_down_is_abandoned_after_three_failed_batches(openai_config, serve):
    server = serve(fail_always=True)
    cfg = openai_config(server.url, "curate.rephrase_batch_size=1", "curate.rephrase_max_retries=0")
    out, stats = rephrase_documents(make_docs(SHAKESPEARE), cfg)
    assert len(server.requests) == 3 and stats["failed"] == stats["selected"] == 7 and len(out) == 7


def test_long_documents_are_rephrased_in_chunks_and_joined(openai_config, serve):
    server = serve()
    text = " ".join(SHAKESPEARE)
    cfg = openai_config(server.url, "curate.rephrase_chunk_chars=200", "curate.rephrase_batch_size=16")
    out, stats = rephrase_documents(make_docs([text]), cfg)
    pieces = split_chunks(text, 200)
    assert stats["chunks"] == len(pieces) == len(server.requests[0]["body"]["prompt"]) >= 4
    assert all(len(p) <= 200 for p in pieces)
    assert stats["rephrased"] == 1 and synthetic(out)[0].text.count("\n\n") == len(pieces) - 1


def test_api_key_comes_from_the_environment_and_never_reaches_the_logs(openai_config, serve, monkeypatch):
    monkeypatch.setenv("TEST_REPHRASE_KEY", KEY)
    server = serve(fail_first=1, api_key=KEY)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    loggers = [logging.getLogger(n) for n in ("components.curate.rephrase", "components.curate.rephrase_clients")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        cfg = openai_config(server.url, "curate.rephrase_api_key_env=TEST_REPHRASE_KEY")
        _, stats = rephrase_documents(make_docs(SHAKESPEARE[:2]), cfg)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests) and stats["retries"] == 1
    logged = "\n".join(r.getMessage() for r in records)
    assert "attempt 1 failed" in logged and KEY not in logged and KEY not in json.dumps(stats)


def test_without_the_key_the_endpoint_rejects_and_documents_count_as_failed(openai_config, serve, monkeypatch):
    monkeypatch.delenv("TEST_REPHRASE_KEY", raising=False)
    server = serve(api_key=KEY)
    cfg = openai_config(server.url, "curate.rephrase_api_key_env=TEST_REPHRASE_KEY")
    out, stats = rephrase_documents(make_docs(SHAKESPEARE[:2]), cfg)
    assert server.requests[0]["auth"] is None
    assert len(server.requests) == 1 and stats["retries"] == 0  # a 401 is not retried
    assert stats["failed"] == 2 and len(out) == 2


def test_disabled_rephrasing_returns_the_documents_unchanged(make_config):
    docs = make_docs(SHAKESPEARE[:2])
    out, stats = rephrase_documents(docs, make_config())
    assert out == docs and stats["enabled"] is False and stats["rephrased"] == 0


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("curate.rephrase_backend=bedrock", "curate.rephrase_backend"),
        ("curate.rephrase_batch_size=0", "curate.rephrase_batch_size"),
        ("curate.rephrase_mix_ratio=0", "curate.rephrase_mix_ratio"),
        ("curate.rephrase_style=limerick", "curate.rephrase_style"),
        ("curate.rephrase_max_retries=-1", "curate.rephrase_max_retries"),
        ("curate.rephrase_model=", "curate.rephrase_model"),
        ("curate.rephrase_endpoint=ftp://host/v1", "curate.rephrase_endpoint"),
    ],
)
def test_a_bad_rephrase_knob_raises_config_error_naming_the_key(openai_config, override, key):
    cfg = openai_config("http://127.0.0.1:9/v1", override)
    with pytest.raises(ConfigError, match=key):
        rephrase_documents(make_docs(SHAKESPEARE[:1]), cfg)


def test_hf_backend_needs_a_model_directory(make_config, tmp_path):
    cfg = make_config("curate.rephrase_enabled=true", "curate.rephrase_backend=hf", f"curate.rephrase_model={tmp_path}")
    with pytest.raises(ConfigError, match="curate.rephrase_model"):
        rephrase_documents(make_docs(SHAKESPEARE[:1]), cfg)


def test_a_custom_template_file_is_used_as_the_prompt(openai_config, serve, tmp_path):
    template = tmp_path / "pirate.txt"
    template.write_text("Say it like a pirate: {text}\nPirate:")
    server = serve()
    cfg = openai_config(server.url, f"curate.rephrase_style={template}")
    out, _ = rephrase_documents(make_docs(SHAKESPEARE[:1]), cfg)
    assert server.requests[0]["body"]["prompt"] == [f"Say it like a pirate: {SHAKESPEARE[0]}\nPirate:"]
    assert all(d.metadata["rephrase_style"] == "pirate" for d in synthetic(out))


@pytest.mark.parametrize("style", ["wikipedia", "qa", "easy", "hard"])
def test_each_shipped_style_has_a_template_with_one_text_slot(style):
    assert style in STYLES
    assert load_template(style).count("{text}") == 1


def test_chunks_respect_the_limit_and_cut_at_paragraph_ends_first():
    text = "Para one. Two sentences!\n\n" + "word " * 60 + "\n\n\n  \n\nEnd."
    chunks = split_chunks(text, 100)
    assert chunks[0] == "Para one. Two sentences!"
    assert all(len(c) <= 100 for c in chunks) and len(chunks) == 5 and chunks[-1] == "End."
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split())
