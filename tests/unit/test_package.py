"""The ``components`` package itself: what importing it does to the process (components/__init__.py)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The hook registered before the import runs after the package's own (atexit is last-in first-out),
# so it sees the state the interpreter tears down.
AT_EXIT = """
import atexit, gc
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count()))
import components
print("frozen while running:", gc.get_freeze_count())
"""


def test_every_live_object_is_frozen_out_of_the_collector_before_interpreter_teardown():
    done = subprocess.run(
        [sys.executable, "-c", AT_EXIT], capture_output=True, text=True, cwd=REPO, timeout=60, check=True
    )
    running, at_exit = (int(line.rsplit(" ", 1)[1]) for line in done.stdout.splitlines())
    assert running == 0  # the collector works as usual while the step runs
    assert at_exit > 1000
