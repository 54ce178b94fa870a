"""Mean mode: one deterministic pass in place of the Monte-Carlo average over φ's noise.

In "mean" mode every site replaces its softplus noise by the expectation E[softplus(μ + ε)]. Through the
network's nonlinearities that is not the MC average: a network trained with φ's noise has BatchNorm running
statistics of *noisy* activations, and in mean mode the activations after each site are less spread out and,
through the ReLUs, shifted (E[ReLU(a)] ≠ ReLU(E[a]), the "variance shift" of Li et al., CVPR 2019).

The calibration fixes that in one pass over training images with every site in "mean" mode: each BatchNorm's
plain average of its batch statistics (`measure.py`), optionally fitted so that mean mode matches the MC average
(`mc_fit.py`; for a LayerNorm model such as a ViT, which has no statistics, this fit of a mean-mode weight and
bias per LayerNorm is the only calibration). The result (`state.MeanModeCalibration`) is installed by the
handle (`AttachedPerturbation.calibrate_mean_mode`), saved next to the sites and read by each norm layer's own
`forward` only while the layer is in eval mode and every site is in "mean" mode; training and "mc" evaluation
keep the model's own statistics, which are never modified. A calibration whose layers trained since is stale:
it is then not used, with a warning, until calibrated again.

Nothing here imports the handle: the handle calls this package.
"""

from .calibrate import build_calibration
from .norms import calibratable_norms, calibration_targets, fittable_layer_norms, norm_key
from .predict import mc_predict, mean_predict
from .state import CalibratedNormForward, LayerNormAffine, MeanModeCalibration, NormStats

__all__ = [
    "CalibratedNormForward",
    "LayerNormAffine",
    "MeanModeCalibration",
    "NormStats",
    "build_calibration",
    "calibratable_norms",
    "calibration_targets",
    "fittable_layer_norms",
    "mc_predict",
    "mean_predict",
    "norm_key",
]
