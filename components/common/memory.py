"""Peak resident memory of a block of code: what loading and running a model costs in RAM.

Linux keeps every process's resident-set high-water mark (``VmHWM`` in ``/proc/self/status``) and
resets it to the current resident set when ``5`` is written to ``/proc/self/clear_refs`` (Linux
4.0+). So a block's peak is: reset, run the block, read ``VmHWM``. Memory the block frees again
(a model deleted at its end, a temporary tensor) still counts: the kernel records the mark before it
unmaps pages. ``resource.getrusage`` cannot do this, its ``ru_maxrss`` never goes down.

:func:`peak_memory` reports the peak *above* the resident set right before the block, so what the
process already held (Python, torch, transformers, earlier data) is not charged to the block.
Before that baseline is read, garbage is collected and glibc is asked to hand freed heap back to the
kernel (``malloc_trim``): otherwise a block could reuse pages an earlier block freed but the
allocator kept, and measure less than it needs.

What stays the caller's job: one-time costs (a library's import, the allocator's first arenas, lazy
initialisation on a first forward) are charged to whichever block pays them first; warm them up
before the first measured block when two blocks are to be compared.

The kernel's resident-set counters are per-CPU and folded into the total in batches, so each
reading may be off by up to :func:`counter_slack_mb` (a fraction of a MB on a laptop, tens of MB on
a 64-core node): a number for a model of many MB, not for a single small allocation.

Where the mark cannot be reset (not Linux, a read-only ``/proc``) nothing is measured: the result's
numbers are None and ``unsupported`` says why, so a stage reports no number rather than a wrong one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
#: What /proc/self/clear_refs takes to reset the peak resident set (Documentation/filesystems/proc.rst).
RESET_PEAK = "5"


def counter_slack_mb() -> float:
    """How far ``increase_mb`` may be off: two readings, each missing up to one batch of pages per
    online CPU (the kernel's rss_stat per-CPU counters fold at ``percpu_counter_batch`` =
    max(32, 2 × CPUs) pages, lib/percpu_counter.c)."""
    cpus = os.sysconf("SC_NPROCESSORS_ONLN") if hasattr(os, "sysconf") else (os.cpu_count() or 1)
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    return 2 * cpus * max(32, 2 * cpus) * page / MB


@dataclass
class PeakMemory:
    """One block's resident memory in MB: ``baseline_mb`` right before it, ``peak_mb`` its highest
    point. All None, with ``unsupported`` saying why, where it cannot be measured."""

    baseline_mb: float | None = None
    peak_mb: float | None = None
    unsupported: str = ""

    @property
    def increase_mb(self) -> float | None:
        """The most memory the block held beyond what the process held before it."""
        if self.baseline_mb is None or self.peak_mb is None:
            return None
        return self.peak_mb - self.baseline_mb


def status_mb(field: str) -> float | None:
    """``field`` (``VmRSS``, ``VmHWM``, ...) of /proc/self/status in MB; None where there is none."""
    try:
        lines = STATUS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == field:
            number, _, unit = value.strip().partition(" ")
            if unit.strip() != "kB":
                return None
            return int(number) / 1024
    return None


def reset_peak() -> str:
    """Reset the peak resident set to the current one; returns '' on success, else why it could not."""
    if status_mb("VmHWM") is None:
        return f"{STATUS} has no VmHWM (not Linux?)"
    try:
        CLEAR_REFS.write_text(RESET_PEAK)
    except OSError as e:
        return f"cannot reset the peak resident set through {CLEAR_REFS}: {e}"
    return ""


def release_free_memory() -> None:
    """Collect garbage and return the allocator's free heap pages to the kernel (glibc only)."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    try:
        trim = ctypes.CDLL(libc_name).malloc_trim
    except (OSError, AttributeError):  # musl and other libcs have no malloc_trim
        return
    trim(0)


@contextmanager
def peak_memory() -> Iterator[PeakMemory]:
    """Measure the block's peak resident memory; read ``increase_mb`` (or the others) after it."""
    result = PeakMemory()
    release_free_memory()
    baseline = status_mb("VmRSS")
    why = reset_peak() if baseline is not None else f"{STATUS} has no VmRSS (not Linux?)"
    if why:
        result.unsupported = why
        yield result
        return
    yield result
    peak = status_mb("VmHWM")
    if peak is None:
        result.unsupported = f"{STATUS} has no VmHWM"
        return
    result.baseline_mb, result.peak_mb = baseline, max(peak, baseline)
