"""The project's error types.

Every user mistake (bad path, bad option, corrupt file) raises a subclass of SparseLMError; the CLI
turns it into a one-line message and a non-zero exit, never a traceback.
"""


class SparseLMError(Exception):
    """Base class of all errors meant for the user."""


class ConfigError(SparseLMError):
    """An option is out of range or inconsistent."""


class DataError(SparseLMError):
    """The corpus is missing, empty, unreadable or does not match the vocabulary."""


class CheckpointError(SparseLMError):
    """A checkpoint file is missing, corrupt, of another format or version, or inconsistent."""


class NonFiniteError(SparseLMError):
    """A loss or gradient norm became NaN or infinite."""


class DivergedError(SparseLMError):
    """The training loss stayed far above the uniform model's (--on-divergence stop)."""
