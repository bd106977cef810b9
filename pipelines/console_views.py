"""How ``lmforge run`` shows the state a :class:`~pipelines.console.RunLog` keeps.

- :class:`LiveView`, on a terminal: a table redrawn in place (rich), one row per step, whose last
  frame stays on screen;
- :class:`PlainView`, on a pipe (CI, ``| tee``, a log file): plain lines as things happen, a step
  starting, a progress line at most every :data:`PIPE_PROGRESS_SECONDS`, a step ending;
- :class:`VerboseView` (``--verbose``): every line of every step as it comes, minus noise.

Each has ``line(text)`` (a line of output that is not noise), ``update(log, now)`` and ``finish(log, now)``.
"""

from __future__ import annotations

import time
from typing import TextIO

from pipelines.console import RunLog, Step

PIPE_PROGRESS_SECONDS = 60.0


class PlainView:
    """Line-by-line output for a pipe: a line per step start and end, progress at most once a minute."""

    def __init__(self, out: TextIO, started: float) -> None:
        self.out, self.started = out, started
        self._shown: dict[str, tuple[str, str, float]] = {}

    def line(self, text: str) -> None:
        pass

    def update(self, log: RunLog, now: float, final: bool = False) -> None:
        for task in log.order:
            step = log.steps[task]
            state, progress, at = self._shown.get(task, ("waiting", "", 0.0))
            if step.state in ("done", "failed") and task not in log.settled and not final:
                continue  # print its line once its headline (KFP's outputs listing) has been read
            if step.state != state:
                if step.state != "waiting":
                    self._print(now, step, step.status_text(now) if step.state != "running" else "started")
                self._shown[task] = (step.state, step.progress, now)
            elif step.state == "running" and step.progress != progress and now - at >= PIPE_PROGRESS_SECONDS:
                self._print(now, step, step.status_text(now))
                self._shown[task] = (step.state, step.progress, now)

    def _print(self, now: float, step: Step, text: str) -> None:
        mark = {"running": "▶", "done": "✓", "failed": "✗"}.get(step.state, "·")
        print(f"[{now - self.started:5.0f}s] {mark} {step.label:<24} {text}", file=self.out, flush=True)

    def finish(self, log: RunLog, now: float) -> None:
        self.update(log, now, final=True)


class LiveView:
    """A table redrawn in place on a terminal (rich), one row per step; the last frame stays on screen.

    rich redraws it 4 times a second from its own thread, so elapsed times and spinners move while a
    step prints nothing; the table is rebuilt from the :class:`RunLog` at each redraw.
    """

    def __init__(self, out: TextIO, started: float) -> None:
        from rich.console import Console
        from rich.live import Live

        self.started = started
        self._log: RunLog | None = None
        self.console = Console(file=out, force_terminal=True, highlight=False)
        self.live = Live(
            console=self.console, get_renderable=self._render, refresh_per_second=4, transient=False, auto_refresh=True
        )
        self.live.start()

    def line(self, text: str) -> None:
        pass

    def _render(self):
        from rich.text import Text

        return self._table(self._log, time.time()) if self._log is not None else Text("")

    def _table(self, log: RunLog, now: float):
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))
        table.add_column(width=1)
        table.add_column(no_wrap=True)
        table.add_column(overflow="fold")
        for task in list(log.order):
            step = log.steps[task]
            if step.state == "running":
                mark = Spinner("dots", style="cyan")
            else:
                mark = Text(*{"done": ("✓", "green"), "failed": ("✗", "bold red")}.get(step.state, ("·", "dim")))
            style = {"failed": "red", "waiting": "dim"}.get(step.state, "")
            table.add_row(mark, Text(step.label, style=style or "bold"), Text(step.status_text(now), style=style))
        table.add_row("", Text(f"{now - self.started:.0f}s", style="dim"), "")
        return table

    def update(self, log: RunLog, now: float) -> None:
        self._log = log
        self.live.refresh()

    def finish(self, log: RunLog, now: float) -> None:
        self._log = log
        self.live.refresh()
        self.live.stop()


class VerboseView:
    """Every line of every step as it comes (minus KFP's local-runner warnings), as before the console existed."""

    def __init__(self, out: TextIO, started: float) -> None:
        self.out = out

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def update(self, log: RunLog, now: float) -> None:
        pass

    def finish(self, log: RunLog, now: float) -> None:
        pass


def make_view(out: TextIO, verbose: bool, started: float):
    if verbose:
        return VerboseView(out, started)
    if out.isatty():
        return LiveView(out, started)
    return PlainView(out, started)
