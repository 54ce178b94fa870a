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
from .perturbed_io import attach_pretrained, load_perturbed, save_perturbed
from .resolvers import register_resolver
from .robustness import evaluate_adversarial, parse_attack_specs
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
    "attach_pretrained",
    "calibrate_mean_mode",
    "evaluate_adversarial",
    "load_perturbed",
    "parse_attack_specs",
    "register_resolver",
    "save_perturbed",
]
