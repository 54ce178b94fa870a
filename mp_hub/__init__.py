"""mp_hub: MetaPerturb (Ryu et al., NeurIPS 2020) for the Hugging Face Hub."""

__version__ = "0.1.0"

from .attach import AttachedPerturbation, attach  # noqa: E402
from .calibration import calibrate_mean_mode  # noqa: E402
from .config import MetaPerturbConfig  # noqa: E402
from .errors import (  # noqa: E402
    AttachError,
    CheckpointError,
    ConfigError,
    DataError,
    DistributedError,
    InvalidInputError,
    MetaPerturbError,
    NotCachedError,
)
from .perturb import MetaPerturb  # noqa: E402
from .perturbed_io import load_perturbed, save_perturbed  # noqa: E402
from .resolvers import register_resolver  # noqa: E402
from .site import PerturbSite  # noqa: E402

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
