"""Logging and progress bars that read well both in a terminal and in a KFP step's log."""

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
