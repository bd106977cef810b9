"""Imported by a spare worker's setup hook in test_spares.py: notes the importing process's pid in
``$LMFORGE_SPARE_PROBE_DIR`` (one empty file per process), so the test sees which processes preloaded."""

import os

open(os.path.join(os.environ["LMFORGE_SPARE_PROBE_DIR"], str(os.getpid())), "w").close()
