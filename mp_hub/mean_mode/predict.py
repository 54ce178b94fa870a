"""Prediction with a perturbed model: one deterministic pass ("mean" mode) or a batched Monte-Carlo average.

`mean_predict` runs every site in "mean" mode: the softplus noise is replaced by its expectation
E[softplus(μ + ε)] (`functional.expected_softplus`), one pass at little more than the bare model's cost
(docs/performance.md). A BatchNorm model needs `mp_hub.calibrate_mean_mode` first (BatchNorm statistics of
mean-mode activations, `measure.py`); a LayerNorm model (ViT) is calibrated by the MC-matched fit
(`mc_fit_steps`, `mc_fit.py`).

`mc_predict` averages the softmax over k noise draws like the authors' test-time MC, exactly (the same
distribution as k separate passes): the first site the forward pass reaches repeats its input `chunk` times,
so everything before it (the stem and the first block) runs once per chunk and the chunk's draws run as one
batch. That pays for small batches; for large ones the repeated batch only loses cache locality, so the
default chunk is max(1, 64 // B): a batch of 64 or more runs one draw per pass.
"""

from __future__ import annotations

import logging
import weakref

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InvalidInputError
from ..evaluation import logits_of, perturb_sites, sites_inference_mode
from ..site import PerturbSite, repeating_first_input
from .norms import calibratable_norms, fittable_layer_norms
from .state import MeanModeCalibration

logger = logging.getLogger(__name__)
_CHECKED_UNCALIBRATED: weakref.WeakSet[PerturbSite] = weakref.WeakSet()  # first sites of models warned about


def _sites(model: nn.Module) -> list[PerturbSite]:
    sites = perturb_sites(model)
    if not sites:
        raise ConfigError("the model has no PerturbSite: attach φ first (mp_hub.attach)")
    return sites


def _warn_uncalibrated(model: nn.Module, sites: list[PerturbSite]) -> None:
    """At most one warning per set of sites (one module walk each), not one per call."""
    if sites[0] in _CHECKED_UNCALIBRATED:
        return
    if any(isinstance(m, MeanModeCalibration) for m in model.modules()):
        return
    _CHECKED_UNCALIBRATED.add(sites[0])
    if calibratable_norms(model):
        logger.warning(
            "mean mode on a BatchNorm model without calibration: expect lower accuracy than the MC average; "
            "run mp_hub.calibrate_mean_mode(model, train_batches) once after training"
        )
    elif fittable_layer_norms(model):
        logger.warning(
            "mean mode on a LayerNorm model without calibration: expect predictions that differ from the MC "
            "average; run mp_hub.calibrate_mean_mode(model, train_batches, mc_fit_steps=200) once after training"
        )


@torch.no_grad()
def mean_predict(model: nn.Module, pixel_values: Tensor) -> Tensor:
    """Class probabilities (B, L) from one pass with every site in "mean" mode (modes restored after)."""
    _warn_uncalibrated(model, _sites(model))  # a model without sites is an error, not a silent bare pass
    with sites_inference_mode(model, "mean"):
        return torch.softmax(logits_of(model(pixel_values)).float(), dim=-1)


@torch.no_grad()
def mc_predict(model: nn.Module, pixel_values: Tensor, k: int = 10, *, chunk: int | None = None) -> Tensor:
    """Mean over k noise draws of the class probabilities (B, L), the sites sampling ("mc" mode).

    The model must be in eval mode (in training mode the sites' batch statistics would see the repeated batch).
    `chunk`: draws per batched pass (default max(1, 64 // B); larger saves more of the prefix but costs cache
    locality).
    """
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive int, got {k!r}")
    sites = _sites(model)
    if any(s.training for s in sites):
        raise ConfigError("mc_predict needs the model in eval mode: call model.eval() first")
    batch = pixel_values.shape[0]
    chunk = max(1, min(k, chunk or 64 // max(batch, 1)))
    total = None
    with sites_inference_mode(model, "mc"):
        done = 0
        while done < k:
            draws = min(chunk, k - done)
            with repeating_first_input(sites, draws) as repeat:
                logits = logits_of(model(pixel_values))
            if repeat.pending or logits.shape[0] != draws * batch:
                raise InvalidInputError("no site was reached with the batch (is φ attached and enabled?)")
            probs = torch.softmax(logits.float(), dim=-1).view(draws, batch, -1).sum(0)
            total = probs if total is None else total + probs
            done += draws
    return total / k
