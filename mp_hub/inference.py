"""Deprecated alias: `mc_predict` and `mean_predict` live in `mp_hub.mean_mode`."""

import warnings

from .mean_mode import mc_predict, mean_predict

__all__ = ["mc_predict", "mean_predict"]

warnings.warn(
    "mp_hub.inference is deprecated and will be removed: import mc_predict and mean_predict from mp_hub.mean_mode",
    FutureWarning,
    stacklevel=2,
)
