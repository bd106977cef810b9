"""Benchmark: erasure-codec encode/decode throughput vs a plain copy of the same bytes.

For 64 MiB of random bytes, for ``xor`` k=4 and ``rs`` k=4,m=2, against ``np.copyto`` into a
preallocated buffer, all measured in the same process:

- encode into pieces that own their bytes (every byte copied or coded once, every piece checksummed);
- encode as the keeper runs it (``copy=False``: whole data pieces stay views of the snapshot buffer;
  a holder copies them once when it stores them);
- decode with ``m`` data pieces lost (the expensive case: the parity math runs) into a preallocated
  buffer (``decode_into``), checksums of the pieces used included.

Throughput is payload bytes per second, best of several repeats; the ratio to the copy is what the
issue targets (>= 0.5x), printed with PASS or MISS.

Each measurement runs in a child process twice: with glibc's default allocator settings, and with
:data:`~components.resilience.codec.MALLOC_REUSE_ENV` (the setting keepers should run with): the
codec's new pieces are fresh arrays, and by default glibc unmaps large freed blocks, so the
next encode page-faults its memory in anew.
No timed assertion; the children assert that every decode returns the original bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

SIZE = 64 << 20
REPEATS = 7
CASES = [("xor", 4, 1), ("rs", 4, 2)]


def measure() -> dict:
    """GB/s of each operation, best of :data:`REPEATS`; the operations take turns within each repeat
    so that load from other processes on a shared machine hits the copy and the codecs alike."""
    from components.resilience.codec import make_codec

    data = np.random.default_rng(0).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    src, dst = np.frombuffer(data, dtype=np.uint8), np.empty(SIZE, dtype=np.uint8)
    ops = {"copy": lambda: np.copyto(dst, src)}
    backends = {}
    for scheme, k, m in CASES:
        codec, name = make_codec(scheme, k, m), f"{scheme} k={k} m={m}"
        survivors = codec.encode(1, 0, data)[m:]  # the first m data pieces are lost
        assert codec.decode(survivors) == data
        backends[name] = getattr(codec, "backend", "numpy")
        out = np.empty(SIZE, dtype=np.uint8)
        assert bytes(codec.decode_into(survivors, out)) == data
        ops[f"{name} encode"] = lambda c=codec: c.encode(1, 0, src)
        ops[f"{name} encode_views"] = lambda c=codec: c.encode(1, 0, src, copy=False)
        ops[f"{name} decode"] = lambda c=codec, s=survivors, o=out: c.decode_into(s, o)
    best = dict.fromkeys(ops, float("inf"))
    for round_ in range(REPEATS + 1):
        for op, fn in ops.items():
            t0 = time.perf_counter()
            fn()
            if round_ > 0:  # round 0 is a warm-up: first-touch page faults, backend tables
                best[op] = min(best[op], time.perf_counter() - t0)
    assert np.array_equal(dst, src)
    gbps = {op: SIZE / seconds / 1e9 for op, seconds in best.items()}
    return {
        "copy": gbps["copy"],
        **{
            n: {
                "backend": b,
                "encode": gbps[f"{n} encode"],
                "encode_views": gbps[f"{n} encode_views"],
                "decode": gbps[f"{n} decode"],
            }
            for n, b in backends.items()
        },
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def run_child(extra_env: dict[str, str]) -> dict:
    env = {**os.environ, **extra_env}
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_codec_throughput_vs_plain_copy():
    from components.resilience.codec import MALLOC_REUSE_ENV

    lines = [f"\n[bench] erasure codec, {SIZE >> 20} MiB payload, best of {REPEATS}; decode with m data pieces lost"]
    for label, env in (("default glibc malloc", {}), ("keeper env (MALLOC_REUSE_ENV)", MALLOC_REUSE_ENV)):
        result = run_child(env)
        copy = result.pop("copy")
        lines.append(f"  {label}: np.copyto into a preallocated buffer {copy:.2f} GB/s")
        for name, r in result.items():
            ratios = {op: r[op] / copy for op in ("encode", "encode_views", "decode")}
            shown = ", ".join(
                f"{label} {r[op]:.2f} GB/s = {ratios[op]:.2f}x ({verdict(ratios[op] >= 0.5)})"
                for op, label in (("encode", "encode"), ("encode_views", "encode as the keeper"), ("decode", "decode"))
            )
            lines.append(f"    {name:10s} ({r['backend']}): {shown}   (target >= 0.5x copy)")
    print("\n".join(lines))


if __name__ == "__main__":
    print(json.dumps(measure()))
