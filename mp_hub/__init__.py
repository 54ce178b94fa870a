"""mp_hub: MetaPerturb (Ryu et al., NeurIPS 2020) for the Hugging Face Hub."""

from .attach import AttachedPerturbation, attach, calibrate_mean_mode
from .config import MetaPerturbConfig
from .errors import (
    AttachError,
    CheckpointError,
    ConfigError,
    DataError,
    DistributedError,
    InvalidInputError,
    MetaPerturbError,
    NotCachedError,
)
from .perturb import MetaPerturb
from .perturbed_io import load_perturbed, save_perturbed
from .resolvers import register_resolver
from .site import PerturbSite
from .version import __version__

__all__ = [
    "AttachError",
    "AttachedPerturbation",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DistributedError",
    "InvalidInputError",
    "MetaPerturb",
    "MetaPerturbConfig",
    "MetaPerturbError",
    "NotCachedError",
    "PerturbSite",
    "__version__",
    "attach",
    "calibrate_mean_mode",
    "load_perturbed",
    "register_resolver",
    "save_perturbed",
]
