"""Fixtures shared by every test layer: an offline environment, configs rooted in a temp dir, and a
tiny real dataset and model built from the quick-start data (no hub downloads, no mocks)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may be downloaded at test time; Ray must stay on loopback (see README, "Testing").
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from components.common.config import LifecycleConfig, load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "pipelines" / "data" / "quickstart"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def lmforge_cli(*args: str, tty: bool = False, cwd: Path = REPO, timeout: float = 3000):
    """Run ``lmforge ARGS`` as a person would, in a pseudo-terminal (``tty=True``) or with its output
    on pipes; returns a ``CompletedProcess`` (in a terminal, stdout holds stdout and stderr together,
    escape codes included, as the screen received them)."""
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "pipelines.cli", *args]
    if not tty:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))  # rows, columns
    proc = subprocess.Popen(cmd, stdin=secondary, stdout=secondary, stderr=secondary, cwd=cwd, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 1 << 16)
        except OSError:  # EIO: the program exited and closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    status = proc.wait(timeout=60)
    return subprocess.CompletedProcess(cmd, status, b"".join(chunks).decode("utf-8", "replace"), "")


@pytest.fixture
def make_config(tmp_path):
    """``make_config("pretrain.steps=5", ...)`` → a tiny-profile config whose home is a temp dir."""

    def build(*overrides: str, profile: str = "tiny") -> LifecycleConfig:
        return load_config(profile, [f"run.home={tmp_path / 'home'}", *overrides])

    return build


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A curated-dataset directory (manifest, tokenizer, train/heldout shards) from 3,000 lines of
    the quick-start Shakespeare, built with the same helpers the curate stage uses."""
    from tests.tiny_data import curated_shakespeare

    root = tmp_path_factory.mktemp("tiny_dataset")
    return curated_shakespeare(root, lines=3000, vocab_size=512, train_fraction=0.9, shard_tokens=20_000)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_dataset) -> Path:
    """A randomly initialised tiny Llama saved in HF format together with the tiny tokenizer."""
    import torch
    from transformers import LlamaForCausalLM

    from components.common.models import llama_config
    from components.common.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("tiny_model")
    tok = load_tokenizer(tiny_dataset / "tokenizer")
    torch.manual_seed(0)
    config = llama_config(
        "tiny",
        vocab_size=len(tok),
        seq_len=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(root)
    tok.save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def trained_tiny_model(tmp_path_factory, tiny_model, tiny_dataset) -> Path:
    """``tiny_model`` after 200 plain next-token steps on ``tiny_dataset``, so its perplexity is far
    below uniform and a quantization or evaluation difference shows (a random model predicts
    ~uniformly anyway)."""
    import shutil

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from components.common.shards import TokenWindows

    root = tmp_path_factory.mktemp("trained_tiny_model")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    windows = TokenWindows(tiny_dataset, "train", 65)
    rng = np.random.default_rng(0)
    for _ in range(200):
        batch = torch.from_numpy(np.stack([windows[i] for i in rng.integers(0, len(windows), 8)]))
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(root)
    for f in tiny_model.iterdir():
        if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
            shutil.copy2(f, root / f.name)
    return root


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto) on 127.0.0.1 for the test session; yields its host:port.

    The access keys are moto's throwaway test values, set only in this process's environment.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server._server.server_address
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = "lmforge-test"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "lmforge-test"  # moto accepts any key pair
    yield f"{host}:{port}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def wikitext_dataset(tmp_path_factory, tiny_dataset) -> Path:
    """A second-domain curated dataset (WikiText-2 paragraphs, ~30k train tokens) tokenized with the
    SAME tokenizer as ``tiny_dataset`` (same manifest tokenizer digest): the continual corpus."""
    import shutil

    from components.common.shards import ShardWriter, read_manifest, token_dtype, write_manifest
    from components.common.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("wikitext_dataset")
    shutil.copytree(tiny_dataset / "tokenizer", root / "tokenizer")
    tok = load_tokenizer(root / "tokenizer")
    lines = (SHARED_DATA / "wikitext2" / "valid.txt").read_text(encoding="utf-8").splitlines()
    docs = [line.strip() for line in lines if len(line.strip()) > 200 and not line.strip().startswith("=")][:130]
    dtype = token_dtype(len(tok))
    splits = {}
    for split, part in (("train", docs[: int(len(docs) * 0.9)]), ("heldout", docs[int(len(docs) * 0.9) :])):
        writer = ShardWriter(root, split, dtype, shard_tokens=20_000)
        for d in part:
            writer.add(tok.encode(d, add_special_tokens=False) + [tok.eos_token_id])
        splits[split] = writer.close()
    digest = read_manifest(tiny_dataset)["tokenizer_digest"]
    write_manifest(root, dtype=dtype, tokenizer_digest=digest, splits=splits)
    return root


@pytest.fixture(scope="session")
def scored_wikitext_dataset(tmp_path_factory, wikitext_dataset) -> Path:
    """``wikitext_dataset`` with the per-document quality scores curation records (train/quality.npz),
    scored by curation's own rule margins (components/curate/score.py) on its decoded train documents."""
    import json
    import shutil

    import numpy as np

    from components.common.config import load_config
    from components.common.shards import MANIFEST, read_manifest, write_quality
    from components.common.tokenizer import load_tokenizer
    from components.curate.document import Document
    from components.curate.score import RULE, quality_scores
    from components.curate.words import RegexWordTokenizer

    root = tmp_path_factory.mktemp("scored_wikitext") / "dataset"
    shutil.copytree(wikitext_dataset, root)
    manifest = read_manifest(root)
    tok = load_tokenizer(root / "tokenizer")
    stream = np.concatenate(
        [np.fromfile(root / s["path"], dtype=manifest["dtype"]) for s in manifest["splits"]["train"]["shards"]]
    )
    ends = np.flatnonzero(stream == tok.eos_token_id) + 1
    starts = np.concatenate([[0], ends[:-1]])
    docs = [
        Document(tok.decode(stream[a : b - 1].tolist()), "wikitext", i)
        for i, (a, b) in enumerate(zip(starts, ends, strict=True))
    ]
    curate_cfg = load_config("tiny", [f"run.home={root.parent / 'home'}"]).curate
    scores = quality_scores(docs, curate_cfg, RegexWordTokenizer())
    manifest["splits"]["train"]["quality"] = write_quality(root, "train", (ends - starts).tolist(), scores, RULE)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return root
