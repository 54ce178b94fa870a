"""The MetaPerturb math as pure functions of tensors (no state, no modules).

Notation follows the paper and the authors' `models/perturb.py`:
  μ  = CEO₂(ReLU(CEO₁(x))),  CEO(x)_c = λ ⋆ x_c + γ ⋆ mean_c(x)
  f  = spatial_mean(ReLU(K ⋆ x_c))                     (B, C, h) with h shared kernels K
  s  = sigmoid(w · [mean_B f, var_B f, C/C₀, H/H₀])    (C,)
  z  = softplus(μ + ε),  ε ~ N(0, 1)
  m  = κ·(s ⊙ z) + (1 − κ),  y = min(m ⊙ x, clip)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def depthwise(x: Tensor, kernels: Tensor) -> Tensor:
    """Apply `kernels` (k, 1, K, K), shared by every channel, to each channel of x: (B, C·k, H, W).

    A grouped conv with groups=C: on CPU this is >10× faster than reshaping x to B·C single-channel maps.
    Output channel c·k + j is kernel j applied to channel c.
    """
    channels = x.shape[1]
    return F.conv2d(x, kernels.repeat(channels, 1, 1, 1), padding=kernels.shape[-1] // 2, groups=channels)


def channel_equivariant(x: Tensor, identity_kernel: Tensor, mean_kernel: Tensor) -> Tensor:
    """CEO(x)_c = λ ⋆ x_c + γ ⋆ mean_c(x): equivariant to permutations of the channels, any C."""
    pooled = F.conv2d(x.mean(dim=1, keepdim=True), mean_kernel, padding=mean_kernel.shape[-1] // 2)
    return depthwise(x, identity_kernel) + pooled


def noise_mean(x: Tensor, layer1: tuple[Tensor, Tensor], layer2: tuple[Tensor, Tensor]) -> Tensor:
    """μ = CEO₂(ReLU(CEO₁(x))), the mean of the pre-softplus noise."""
    return channel_equivariant(F.relu(channel_equivariant(x, *layer1)), *layer2)


def scale_features(x: Tensor, kernels: Tensor) -> Tensor:
    """f[b, c] = spatial mean of ReLU(K_j ⋆ x_bc) for the h shared kernels: (B, C, h)."""
    batch, channels = x.shape[:2]
    return F.relu(depthwise(x, kernels)).mean(dim=(-1, -2)).view(batch, channels, kernels.shape[0])


def batch_moments(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased variance over the batch: (C, h) each."""
    return features.mean(dim=0), features.var(dim=0)


def scale_inputs(
    feature_mean: Tensor, feature_var: Tensor, *, height: int, channel_norm: float, spatial_norm: float
) -> Tensor:
    """The (C, 2h + 2) rows [mean, var, C/C₀, H/H₀] that the scale's linear layer reads."""
    channels = feature_mean.shape[0]
    size_terms = feature_mean.new_tensor([channels / channel_norm, height / spatial_norm]).expand(channels, 2)
    return torch.cat([feature_mean, feature_var, size_terms], dim=-1)


def channel_scale(
    feature_mean: Tensor,
    feature_var: Tensor,
    fc_weight: Tensor,
    *,
    height: int,
    channel_norm: float,
    spatial_norm: float,
) -> Tensor:
    """s = sigmoid(w · [mean, var, C/C₀, H/H₀]) per channel: (C,)."""
    rows = scale_inputs(feature_mean, feature_var, height=height, channel_norm=channel_norm, spatial_norm=spatial_norm)
    return torch.sigmoid(rows @ fc_weight.t()).view(feature_mean.shape[0])


def update_running_stats(
    running_mean: Tensor, running_var: Tensor, feature_mean: Tensor, feature_var: Tensor, batch: int, momentum: float
) -> None:
    """In-place EMA like the reference, including its quirk: the (already unbiased) batch variance is
    multiplied by B/(B−1) once more before entering running_var."""
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(feature_mean.detach(), alpha=momentum)
        running_var.mul_(1 - momentum).add_(feature_var.detach() * (batch / (batch - 1)), alpha=momentum)


# E[softplus(μ + ε)], ε ~ N(0, 1), in closed form. softplus(t) = t + softplus(−t) gives g(μ) = max(μ, 0) + q(|μ|)
# with q(t) = g(−t) for t ≥ 0, and q(t) = e^{−t}·P(t)/Q(t): a (5, 5) rational fitted by least squares on
# t ∈ [0, 25] to q computed by dense quadrature (float64). Max abs error of g over all μ: 7e-9 in float64, ~5e-7
# in float32 (rounding); the tail beyond t = 25 is below 1e-11. One exp and one division, against the five
# softplus passes of 5-point Gauss–Hermite. The fused kernels (`mp_hub.kernels`) evaluate the same formula.
ESP_P = (0.8060591766603009, 0.23157058976931197, 0.030261089334770837, 0.0056102881957864215,
         0.0011695630042578133, 0.00011471394424043084)  # fmt: skip
ESP_Q = (1.0, -0.09241108264110309, 0.06476655974173456, -0.0015924304661296726, 0.0009951686336963598,
         6.273309722907008e-05)  # fmt: skip


def _horner(coeffs: tuple[float, ...], t: Tensor) -> Tensor:
    out = torch.full_like(t, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * t + c
    return out


def expected_softplus(mu: Tensor) -> Tensor:
    """E[softplus(μ + ε)] for ε ~ N(0, 1), deterministic and differentiable (closed form, see ESP_P/ESP_Q)."""
    t = mu.abs()
    return F.relu(mu) + torch.exp(-t) * _horner(ESP_P, t) / _horner(ESP_Q, t)


def apply_perturbation(
    x: Tensor, noise: Tensor, scale: Tensor, noise_coeff: float | Tensor, clip_value: float
) -> Tensor:
    """y = min(x ⊙ (κ·(s ⊙ z) + 1 − κ), clip), with z the (softplus) noise and s per channel."""
    multiplier = (noise * scale.view(1, -1, 1, 1) - 1) * noise_coeff + 1
    return torch.clamp(x * multiplier, max=clip_value)
