"""Regularizers used as baselines next to MetaPerturb (timm is not a dependency, so they are written here)."""

from .dropblock import DropBlock2d, drop_block, linear_drop_prob, set_drop_prob
from .placement import RegularizerPlacement, attach_regularizer, find_sites

__all__ = [
    "DropBlock2d",
    "RegularizerPlacement",
    "attach_regularizer",
    "drop_block",
    "find_sites",
    "linear_drop_prob",
    "set_drop_prob",
]
