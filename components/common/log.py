"""Logging and progress that read well both in a terminal and in a KFP step's log.

:func:`report_progress` writes one ``lmforge-progress key=value …`` line: ``lmforge run`` turns the
newest such line of a step into that step's live status (pipelines/console.py), and in a pod's log
it reads as a plain progress line. Stages call it at a human pace (a few dozen lines per step at
most), never per record.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def get_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("LMFORGE_LOG_LEVEL", "INFO"))
        logger.propagate = False
    return logger


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A tqdm bar on a terminal; in a pod log (no TTY) a line every 30 s instead of a redraw storm."""
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    yield from tqdm(
        items, desc=desc, total=total, unit=unit, mininterval=0.5 if tty else 30, disable=None if tty else False
    )


#: Prefix of a progress line; pipelines/console.py finds it anywhere in a line, because Ray prefixes
#: what its workers print with ``(RayTrainWorker pid=…)``.
PROGRESS_MARK = "lmforge-progress"


def report_progress(**fields: object) -> None:
    """Print one progress line, e.g. ``report_progress(step="40/300", loss=5.12, tok_s=1830)``.

    Values must not contain spaces (the console splits on them); floats are shown with 4 significant digits.
    """
    parts = [f"{k}={format(v, '.4g') if isinstance(v, float) else v}" for k, v in fields.items()]
    print(PROGRESS_MARK, *parts, file=sys.stderr, flush=True)
