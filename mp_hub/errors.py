"""Typed errors. Each names the problem and, where there is one, the fix."""


class MetaPerturbError(Exception):
    """Base class of every error mp_hub raises on purpose."""


class InvalidInputError(MetaPerturbError, ValueError):
    """A tensor handed to φ or a site is not what it must be (rank, dtype, channels, finiteness)."""


class CheckpointError(MetaPerturbError, ValueError):
    """A φ checkpoint is missing, corrupted, of the wrong format, or does not match the config."""


class ConfigError(MetaPerturbError, ValueError):
    """A configuration value is invalid or missing."""


class NotCachedError(MetaPerturbError, FileNotFoundError):
    """A Hub id was asked for while offline and it is not in the local cache."""


class AttachError(MetaPerturbError, ValueError):
    """φ could not be attached: nothing matched, unknown architecture, attached twice, bad normaliser."""


class DataError(MetaPerturbError, ValueError):
    """A dataset does not fit the job: unknown column, too few classes, an empty task, not images."""


class DistributedError(MetaPerturbError, RuntimeError):
    """The processes of a distributed run disagree (world size, φ checksum)."""


class OutputDirError(MetaPerturbError, OSError):
    """The output folder cannot be written (permissions, a read-only or full disk), before or during a run."""


class OutputDirInUseError(MetaPerturbError, RuntimeError):
    """Another run holds the output folder: two runs writing one folder would overwrite each other's results."""
