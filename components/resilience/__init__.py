"""In-memory, erasure-coded fault tolerance for training (see the module docstrings of callback.py, keeper.py).

:data:`PLUGIN` is how a training stage turns it on: listed in ``TrainSpec.plugins``, the engine runs
it on the Ray driver before each fit (it is a no-op while ``resilience.enabled`` is false and no
fault is injected).
"""

PLUGIN = "components.resilience.driver:training_callbacks"
