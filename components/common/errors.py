"""The few error types lmforge raises on purpose.

Every message names the thing at fault (a config key, a file and line, a URI) and, where there is
one, the fix. Code catches an exception only to add such context and re-raise with ``from``.
"""


class LmforgeError(Exception):
    """Base of every error lmforge raises deliberately; the CLI prints these without a traceback."""


class ConfigError(LmforgeError):
    """A configuration key, value or profile is wrong; the message names the key and the fix."""


class DataError(LmforgeError):
    """Input data is missing, unreadable or empty after filtering; the message names the file."""


class StorageError(LmforgeError):
    """An object-store or filesystem operation failed; the message names the URI."""


class RecoveryError(LmforgeError):
    """Training state could not be restored from any tier (memory, parity, persistent checkpoint)."""


class TrainingJobError(LmforgeError):
    """A training job on the cluster (a KubeRay RayJob) was rejected, failed or could not be followed;
    the one-line message names the RayJob and the reason."""
