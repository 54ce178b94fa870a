"""Regularizers used as baselines next to MetaPerturb (timm is not a dependency, so they are written here), and
the choice of one for a model by name (`apply_regularizer`)."""

from .choice import REGULARIZERS, Regularization, apply_regularizer
from .dropblock import DropBlock2d, drop_block, linear_drop_prob, set_drop_prob
from .placement import RegularizerPlacement, attach_regularizer, find_sites

__all__ = [
    "REGULARIZERS",
    "DropBlock2d",
    "Regularization",
    "RegularizerPlacement",
    "apply_regularizer",
    "attach_regularizer",
    "drop_block",
    "find_sites",
    "linear_drop_prob",
    "set_drop_prob",
]
