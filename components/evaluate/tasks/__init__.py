"""lm-eval tasks shipped with lmforge: task YAMLs, their data files and the script that builds them.

The folder is an ``include_path`` for ``lm_eval.tasks.TaskManager`` (see ``components/evaluate/harness.py``)
and a package only so that its data files are installed with lmforge.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
