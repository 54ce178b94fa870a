"""Prediction with a perturbed model: one deterministic pass ("mean" mode) or a batched Monte-Carlo average.

`mean_predict` runs every site in "mean" mode: the softplus noise is replaced by its expectation
E[softplus(μ + ε)] (a fitted piecewise polynomial, `functional.expected_softplus`), one pass at about ×1.1 of
the bare model's cost (README, "Performance"). A BatchNorm model needs `mp_hub.calibrate_mean_mode` first
(BatchNorm statistics of mean-mode activations; see `mp_hub.calibration`): without it mean mode is 1–10 points
below the MC average on the zoo benchmark. A LayerNorm model (ViT) is calibrated by the MC-matched fit
(`mc_fit_steps`, `mp_hub.calibration_fit`).

`mc_predict` averages the softmax over k noise draws like the authors' test-time MC, exactly (the same
distribution as k separate passes): the first site the forward pass reaches repeats its input `chunk` times,
so everything before it (the stem and the first block) runs once per chunk and the chunk's draws run as one
batch. That pays for small batches (B = 16, k = 10: ~0.8× the time of 10 passes on a 2-core CPU); beyond
~64 images per pass, larger batches only lose cache locality, so the default chunk is max(1, 64 // B) and a
batch of 128 runs one draw per pass (no cheaper than k passes: after the first site nothing is shared).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from .attach import handle_of
from .calibration import calibratable_norms, fittable_layer_norms
from .errors import AttachError, ConfigError, InvalidInputError
from .evaluation import logits_of, perturb_sites, sites_inference_mode
from .site import MC_EXPANSION, PerturbSite

logger = logging.getLogger(__name__)


class _Expansion:
    """Repeat the first site's input `k` times (draw-major: row d·B + b is draw d of image b)."""

    def __init__(self, k: int):
        self.k, self.pending = k, True

    def expand(self, x: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor | None]:
        self.pending = False
        if self.k == 1:  # one draw per pass (large batches): x itself; Tensor.repeat would copy it
            return x, noise
        repeat = (self.k,) + (1,) * (x.dim() - 1)
        return x.repeat(*repeat), None if noise is None else noise.repeat(*repeat)


def _sites(model: nn.Module) -> list[PerturbSite]:
    sites = perturb_sites(model)
    if not sites:
        raise ConfigError("the model has no PerturbSite: attach φ first (mp_hub.attach)")
    return sites


def _warn_uncalibrated(model: nn.Module) -> None:
    try:
        handle = handle_of(model)
    except AttachError:  # sites placed by hand, not by attach: nothing to look up
        return
    if handle.calibration is not None or handle._uncalibrated_checked:
        return
    handle._uncalibrated_checked = True  # one module walk and at most one warning per handle, not one per call
    if calibratable_norms(handle.model):
        logger.warning(
            "mean mode on a BatchNorm model without calibration: expect lower accuracy than the MC average; "
            "run mp_hub.calibrate_mean_mode(model, train_batches) once after training"
        )
    elif fittable_layer_norms(handle.model):
        logger.warning(
            "mean mode on a LayerNorm model without calibration: expect predictions that differ from the MC "
            "average; run mp_hub.calibrate_mean_mode(model, train_batches, mc_fit_steps=200) once after training"
        )


@torch.no_grad()
def mean_predict(model: nn.Module, pixel_values: Tensor) -> Tensor:
    """Class probabilities (B, L) from one pass with every site in "mean" mode (modes restored after)."""
    _sites(model)  # a model without sites is an error, not a silent bare pass
    _warn_uncalibrated(model)
    with sites_inference_mode(model, "mean"):
        return torch.softmax(logits_of(model(pixel_values)).float(), dim=-1)


@torch.no_grad()
def mc_predict(model: nn.Module, pixel_values: Tensor, k: int = 10, *, chunk: int | None = None) -> Tensor:
    """Mean over k noise draws of the class probabilities (B, L), the sites sampling ("mc" mode).

    The model must be in eval mode (in training mode the sites' batch statistics would see the repeated batch).
    `chunk`: draws per batched pass (default max(1, 64 // B), measured best on CPU; larger saves more of the
    prefix but costs cache locality).
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
            expansion = _Expansion(draws)
            token = MC_EXPANSION.set(expansion)
            try:
                logits = logits_of(model(pixel_values))
            finally:
                MC_EXPANSION.reset(token)
            if expansion.pending or logits.shape[0] != draws * batch:
                raise InvalidInputError("no site was reached with the batch (is φ attached and enabled?)")
            probs = torch.softmax(logits.float(), dim=-1).view(draws, batch, -1).sum(0)
            total = probs if total is None else total + probs
            done += draws
    return total / k
