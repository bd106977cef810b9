"""lmforge's pipeline-step code (see ARCHITECTURE.md).

Importing the package registers one exit hook, :func:`_freeze_before_exit`.
"""

import atexit
import gc


def _freeze_before_exit() -> None:
    """Move every live object out of the cyclic garbage collector's reach before the interpreter
    tears down its modules.

    A step process holds millions of GC-tracked objects (torch, transformers, MLflow, Ray), and
    interpreter finalization runs full collections over all of them while it clears the modules:
    seconds per process on 2 loaded cores, paid by every pipeline step, Ray worker and CLI call.
    Frozen objects are still freed by reference counting and the process's memory goes back to the
    OS anyway; only the finalizers of objects caught in reference cycles are skipped, which Python
    never guarantees at exit. Exit hooks registered after this one (MLflow's run end, Ray's
    shutdown, …) run before it and are unaffected.
    """
    gc.freeze()


# Registered when the package is first imported, so it runs after the exit hooks of everything
# imported later (atexit runs hooks last-in first-out).
atexit.register(_freeze_before_exit)
