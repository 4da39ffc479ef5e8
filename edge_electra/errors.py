"""Errors meant for people: the CLI prints their message, never a traceback."""


class EdgeElectraError(ValueError):
    """Base of every error whose message says what went wrong and how to fix it."""


class ConfigError(EdgeElectraError):
    """A config, target profile or command-line option is invalid."""


class DataError(EdgeElectraError):
    """A dataset or calibration set cannot be used as given."""


class BundleError(EdgeElectraError):
    """A bundle is missing, corrupt, or was built for something else."""


class CheckpointError(EdgeElectraError):
    """A checkpoint cannot be found, read or mapped onto the model."""


class GateRefused(EdgeElectraError):
    """The accuracy gate refused the model: it lost more than the budget allows (the CLI exits 3)."""
