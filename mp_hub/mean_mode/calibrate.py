"""Build a mean-mode calibration: moment matching on training images, then, if asked, the MC-matched fit."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InvalidInputError
from ..site import PerturbSite
from .mc_fit import fit_to_mc
from .measure import measure_mean_mode_stats
from .norms import calibration_targets, fittable_layer_norms, norm_key
from .state import MeanModeCalibration

logger = logging.getLogger(__name__)


def build_calibration(
    model: nn.Module,
    sites: Sequence[PerturbSite],
    batches: Iterable[Any],
    *,
    max_images: int | None = None,
    mc_fit_steps: int = 0,
    mc_samples: int = 20,
    seed: int = 0,
    progress: bool = False,
) -> MeanModeCalibration:
    """The mean-mode calibration of the bare `model` whose φ sites are `sites`, measured on `batches`, not yet
    installed: the handle installs it (`AttachedPerturbation.calibrate_mean_mode`). The arguments are those of
    `mp_hub.calibrate_mean_mode`, which documents them; with `mc_fit_steps` > 0 the moment-matched statistics are
    then fitted to the MC average (`mc_fit.fit_to_mc`).
    """
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 2):
        raise ConfigError(f"max_images must be an int >= 2 (or None for all), got {max_images!r}")
    for name, value, low in (("mc_fit_steps", mc_fit_steps, 0), ("mc_samples", mc_samples, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    targets = calibration_targets(model, layer_norms=mc_fit_steps > 0)
    if not targets:
        if fittable_layer_norms(model):
            raise ConfigError(
                f"{type(model).__name__} has no BatchNorm with running statistics, only LayerNorms (which normalise "
                "each sample by itself): its mean mode is calibrated by the MC-matched fit alone; pass mc_fit_steps > 0"
            )
        raise ConfigError(
            f"{type(model).__name__} has no BatchNorm with running statistics and no nn.LayerNorm with a weight: "
            "its mean mode has nothing to calibrate"
        )
    norms = {n: m for n, m in targets.items() if not isinstance(m, nn.LayerNorm)}  # what moment matching measures
    kept: list[Tensor] | None = [] if mc_fit_steps else None
    measured, seen = measure_mean_mode_stats(model, norms, batches, max_images, keep=kept)
    if seen < 2:
        raise InvalidInputError("calibrate_mean_mode got no batch of at least 2 images")
    calibration = MeanModeCalibration(targets, sites)
    for name, (mean, var) in measured.items():  # (a LayerNormAffine is made from its layer's weight, in place)
        stats = calibration.stats[norm_key(name)].to(device=mean.device, dtype=mean.dtype)
        stats.running_mean.copy_(mean)
        stats.running_var.copy_(var)
        stats.source_batches_tracked.fill_(int(norms[name].num_batches_tracked))
    for stats in calibration.stats.values():
        stats.num_images.fill_(seen)
    if mc_fit_steps:
        if len({tuple(x.shape[1:]) for x in kept}) > 1:
            raise InvalidInputError("mc_fit_steps needs calibration images of one shape (they are batched anew)")
        calibration.mc_fit = fit_to_mc(
            model, calibration, torch.cat(kept), steps=mc_fit_steps, mc_samples=mc_samples, seed=seed, progress=progress
        )
    logger.info(
        "calibrated mean mode: %d BatchNorm and %d LayerNorm layers on %d images",
        len(norms),
        len(targets) - len(norms),
        seen,
    )
    return calibration
