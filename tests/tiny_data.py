"""A curated-dataset directory built straight from the quick-start Shakespeare, with the helpers the
curate stage uses (tokenizer, token shards, manifest): the tests' session dataset and the
experiment scripts' larger one are the same recipe at two sizes."""

from __future__ import annotations

from pathlib import Path

QUICKSTART_TEXT = Path(__file__).resolve().parents[1] / "pipelines" / "data" / "quickstart" / "tinyshakespeare.txt"


def curated_shakespeare(root: Path, *, lines: int, vocab_size: int, train_fraction: float, shard_tokens: int) -> Path:
    """Write ``root/{tokenizer,train,heldout,manifest}`` from the first ``lines`` lines; returns ``root``."""
    from components.common.artifacts import file_digest
    from components.common.shards import ShardWriter, token_dtype, write_manifest
    from components.common.tokenizer import train_tokenizer

    text = QUICKSTART_TEXT.read_text(encoding="utf-8").splitlines()[:lines]
    docs = [d.strip() for d in "\n".join(text).split("\n\n") if len(d.strip()) > 20]
    tok = train_tokenizer(docs, vocab_size=vocab_size)
    tok.save_pretrained(root / "tokenizer")
    dtype = token_dtype(len(tok))
    cut = int(len(docs) * train_fraction)
    splits = {}
    for split, part in (("train", docs[:cut]), ("heldout", docs[cut:])):
        writer = ShardWriter(root, split, dtype, shard_tokens=shard_tokens)
        for d in part:
            writer.add(tok.encode(d, add_special_tokens=False) + [tok.eos_token_id])
        splits[split] = writer.close()
    write_manifest(
        root, dtype=dtype, tokenizer_digest=file_digest(root / "tokenizer" / "tokenizer.json"), splits=splits
    )
    return root
