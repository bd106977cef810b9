"""Tokenizer and token shards: the last step of curation.

The tokenizer is either the one given (so continual pretraining keeps the base model's vocabulary)
or a byte-level BPE trained on the *train* split only, so held-out text never leaks into the
vocabulary. Each document becomes ``ids + [eos]`` (no BOS: EOS alone marks document boundaries in
the packed stream, the GPT-2 convention) and is appended to the split's shards, in the (shuffled)
order the caller gives.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from components.common.log import get_logger, progress
from components.common.shards import ShardWriter
from components.common.tokenizer import load_tokenizer, train_tokenizer

log = get_logger(__name__)
# Documents per call into the Rust tokenizer: large enough to amortise the Python↔Rust crossing.
ENCODE_BATCH = 1024


def prepare_tokenizer(
    out_dir: Path, train_texts: Sequence[str], *, given: str | Path | None, vocab_size: int, min_frequency: int
):
    """Load ``given`` or train a tokenizer on ``train_texts``; save it to ``out_dir/tokenizer``."""
    if given:
        tok = load_tokenizer(given)
        log.info("using the given tokenizer %s (%d tokens)", given, len(tok))
    else:
        tok = train_tokenizer(train_texts, vocab_size, min_frequency)
        log.info("trained a %d-token BPE on %d train documents", len(tok), len(train_texts))
    tok.save_pretrained(out_dir / "tokenizer")
    return tok


def _batches(texts: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(texts), size):
        yield texts[i : i + size]


def pack_split(
    tok,
    texts: Sequence[str],
    root: Path,
    split: str,
    *,
    dtype: np.dtype,
    shard_tokens: int,
    origins: Sequence[str] | None = None,
    synthetic: Sequence[bool] | None = None,
) -> dict:
    """Tokenize ``texts`` into ``root/<split>/shard-*.bin``; the :meth:`ShardWriter.close` summary.

    With ``origins`` (the input file of each text) every shard entry gets ``inputs``: the files whose
    documents have tokens in it (shards cut the packed stream every ``shard_tokens`` tokens, so a
    document may span two). ``synthetic`` flags rephrased texts; their tokens are counted apart.
    """
    writer = ShardWriter(root, split, dtype, shard_tokens)
    eos = tok.eos_token_id
    shard_inputs: dict[int, set[str]] = {}
    position = synthetic_tokens = 0
    n_batches = -(-len(texts) // ENCODE_BATCH)
    for b, batch in enumerate(
        progress(_batches(texts, ENCODE_BATCH), desc=f"tokenize {split}", total=n_batches, unit="batch")
    ):
        for j, ids in enumerate(tok(list(batch), add_special_tokens=False)["input_ids"]):
            i = b * ENCODE_BATCH + j
            writer.add([*ids, eos])
            end = position + len(ids) + 1
            if origins is not None:
                for shard in range(position // shard_tokens, (end - 1) // shard_tokens + 1):
                    shard_inputs.setdefault(shard, set()).add(origins[i])
            if synthetic is not None and synthetic[i]:
                synthetic_tokens += end - position
            position = end
    summary = writer.close()
    if origins is not None:
        for k, shard in enumerate(summary["shards"]):
            shard["inputs"] = sorted(shard_inputs.get(k, ()))
    summary["synthetic_tokens"] = synthetic_tokens
    summary["doc_tokens"] = writer.doc_tokens  # for the quality file (components/curate/score.py); popped
    return summary
