"""MC-matched mean-mode calibration: fit the calibrated BatchNorm statistics (LayerNorm weights) to the MC average.

Why: moment matching (`measure.py`) gives each BatchNorm the statistics of mean-mode activations,
which removes most of the gap between one "mean" pass and the MC average; what is left is the mean-field
error of replacing noise by its expectation through a network that is nonlinear in it (E[ReLU(a)] ≠
ReLU(E[a]) again, now in the signal, not in the statistics), on which the two predictions can still disagree.

What: starting from the moment-matched statistics, Adam steps on the per-channel mean and log-variance of
every calibrated BatchNorm (the model, φ and the sites stay fixed) minimise the cross-entropy from the MC-k
class probabilities (the teacher, computed once on the calibration images) to the one-pass "mean" ones. The
result is stored exactly like a moment-matched calibration (`NormStats`), so inference costs the same.
A LayerNorm normalises each sample by itself, so it has no statistics to fit: there the fit moves a copy of its
weight and bias instead (`LayerNormAffine`), from the layer's own.
Deterministic for given images and seed (every process of a multi-process run gets the same statistics).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..evaluation import logits_of, sites_inference_mode
from ..model_edits import replace_forward
from .norms import norm_key
from .predict import mc_predict
from .state import LayerNormAffine, MeanModeCalibration

logger = logging.getLogger(__name__)

FIT_LR = 0.02  # Adam on (mean, log var) or (weight, bias): chosen on the zoo benchmark (ResNet-20s and ViTs)
FIT_BATCH = 128


class _FitNormForward:
    """A BatchNorm's `forward` during the fit: eval-mode batch norm, differentiable in (mean, log var)."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm, mean: Tensor, log_var: Tensor):
        self.norm, self.mean, self.log_var = norm, mean, log_var

    def __call__(self, own_forward, x: Tensor) -> Tensor:
        norm = self.norm
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x - self.mean.view(shape)) * torch.rsqrt(self.log_var.exp() + norm.eps).view(shape)
        if norm.weight is not None:
            y = y * norm.weight.view(shape) + norm.bias.view(shape)
        return y


class _FitLayerNormForward:
    """A LayerNorm's `forward` during the fit: differentiable in a copy of its weight and bias."""

    def __init__(self, norm: nn.LayerNorm, weight: Tensor, bias: Tensor):
        self.norm, self.weight, self.bias = norm, weight, bias

    def __call__(self, own_forward, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.norm.normalized_shape, self.weight, self.bias, self.norm.eps)


def _start(norm: nn.Module, stats: nn.Module) -> tuple[tuple[Tensor, Tensor], object]:
    """The fit's variables for one norm layer, from its calibration, and the `forward` that reads them."""
    if isinstance(stats, LayerNormAffine):
        pair = (stats.weight.detach().clone().requires_grad_(True), stats.bias.detach().clone().requires_grad_(True))
        return pair, _FitLayerNormForward(norm, *pair)
    mean = stats.running_mean.detach().clone().requires_grad_(True)
    log_var = stats.running_var.detach().clamp_min(1e-12).log().requires_grad_(True)
    return (mean, log_var), _FitNormForward(norm, mean, log_var)


def _store(stats: nn.Module, pair: tuple[Tensor, Tensor]) -> None:
    if isinstance(stats, LayerNormAffine):
        stats.weight.copy_(pair[0])
        stats.bias.copy_(pair[1])
    else:
        stats.running_mean.copy_(pair[0])
        stats.running_var.copy_(pair[1].exp())


def _soft_cross_entropy(teacher: Tensor, logits: Tensor) -> Tensor:
    return -(teacher * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


@torch.no_grad()
def _mean_mode_divergence(model: nn.Module, images: Tensor, teacher: Tensor) -> float:
    """KL(teacher ‖ mean mode), averaged over the images."""
    total = 0.0
    for start in range(0, len(images), FIT_BATCH):
        logits = logits_of(model(images[start : start + FIT_BATCH]))
        target = teacher[start : start + FIT_BATCH]
        entropy = -(target * target.clamp_min(1e-12).log()).sum(-1).mean()
        total += float(_soft_cross_entropy(target, logits) - entropy) * len(target)
    return total / len(images)


def fit_to_mc(
    model: nn.Module,
    calibration: MeanModeCalibration,
    images: Tensor,
    *,
    steps: int,
    mc_samples: int,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit `calibration`'s statistics, weights and biases (in place) so that "mean" mode matches MC-`mc_samples`
    on `images`.

    `model` is the bare model; `calibration` need not be installed. The model's parameters, buffers, mode, its
    norm layers' forward edits and the caller's RNG state are left as they were. Returns what the fit did (saved
    with the calibration). On failure (a diverged fit) `calibration` keeps what it had.
    """
    norms = calibration.norms
    params = list(model.parameters())
    grad_flags = [p.requires_grad for p in params]
    was_training = model.training
    device = images.device
    fitted, edits = {}, []
    try:
        for p in params:
            p.requires_grad_(False)
        model.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            chunks = tqdm(images.split(FIT_BATCH), desc=f"mean-mode fit: MC-{mc_samples} targets", disable=not progress)
            teacher = torch.cat([mc_predict(model, chunk, mc_samples) for chunk in chunks])
            for name, norm in norms.items():  # replacements over any installed calibration's, until removed
                fitted[name], forward = _start(norm, calibration.stats[norm_key(name)])
                edits.append(replace_forward(norm, forward))
            with sites_inference_mode(model, "mean"):
                before = _mean_mode_divergence(model, images, teacher)
                optimizer = torch.optim.Adam([t for pair in fitted.values() for t in pair], lr=FIT_LR)
                order = torch.Generator(device="cpu").manual_seed(seed)
                for _ in tqdm(range(steps), desc="mean-mode fit", disable=not progress):
                    index = torch.randint(0, len(images), (min(FIT_BATCH, len(images)),), generator=order)
                    index = index.to(device)
                    loss = _soft_cross_entropy(teacher[index], logits_of(model(images[index])))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                after = _mean_mode_divergence(model, images, teacher)
        if not (math.isfinite(before) and math.isfinite(after)):  # the calibration keeps what it had
            raise FloatingPointError(f"the MC-matched calibration diverged (KL {before} -> {after})")
        with torch.no_grad():
            for name, pair in fitted.items():
                _store(calibration.stats[norm_key(name)], pair)
    finally:
        for edit in edits:
            edit.remove()
        for p, flag in zip(params, grad_flags):
            p.requires_grad_(flag)
        model.train(was_training)
    logger.info("MC-matched calibration: KL to MC-%d %.4f -> %.4f in %d steps", mc_samples, before, after, steps)
    return {"steps": steps, "mc_samples": mc_samples, "images": len(images), "kl_before": before, "kl_after": after}
