"""The MetaPerturb math as pure functions of tensors (no state, no modules).

Notation follows the paper and the authors' `models/perturb.py`:
  μ  = CEO₂(ReLU(CEO₁(x))),  CEO(x)_c = λ ⋆ x_c + γ ⋆ mean_c(x)
  f  = spatial_mean(ReLU(K ⋆ x_c))                     (B, C, h) with h shared kernels K
  s  = sigmoid(w · [mean_B f, var_B f, C/C₀, H/H₀])    (C,)
  z  = softplus(μ + ε),  ε ~ N(0, 1)
  m  = κ·(s ⊙ z) + (1 − κ),  y = min(m ⊙ x, clip)
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from .esp_coefficients import ESP_COEFFICIENTS


def depthwise(x: Tensor, kernels: Tensor) -> Tensor:
    """Apply `kernels` (k, 1, K, K), shared by every channel, to each channel of x: (B, C·k, H, W).

    A grouped conv with groups=C: on CPU far faster than reshaping x to B·C single-channel maps.
    Output channel c·k + j is kernel j applied to channel c. The kernels are cast to x's dtype (differentiably:
    their gradient comes back in their own dtype), so a float32 φ serves a float64 x.
    """
    channels = x.shape[1]
    weight = kernels.to(x.dtype).repeat(channels, 1, 1, 1)
    return F.conv2d(x, weight, padding=kernels.shape[-1] // 2, groups=channels)


def channel_equivariant(x: Tensor, identity_kernel: Tensor, mean_kernel: Tensor) -> Tensor:
    """CEO(x)_c = λ ⋆ x_c + γ ⋆ mean_c(x): equivariant to permutations of the channels, any C."""
    pooled = F.conv2d(x.mean(dim=1, keepdim=True), mean_kernel.to(x.dtype), padding=mean_kernel.shape[-1] // 2)
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
    # filled on the statistics' device (a scalar fill, not a host-to-device copy of a list)
    size_c = feature_mean.new_full((channels, 1), channels / channel_norm)
    size_h = feature_mean.new_full((channels, 1), height / spatial_norm)
    return torch.cat([feature_mean, feature_var, size_c, size_h], dim=-1)


def channel_scale(
    feature_mean: Tensor,
    feature_var: Tensor,
    fc_weight: Tensor,
    *,
    height: int,
    channel_norm: float,
    spatial_norm: float,
) -> Tensor:
    """s = sigmoid(w · [mean, var, C/C₀, H/H₀]) per channel: (C,), in the statistics' dtype."""
    rows = scale_inputs(feature_mean, feature_var, height=height, channel_norm=channel_norm, spatial_norm=spatial_norm)
    return torch.sigmoid(rows @ fc_weight.to(rows.dtype).t()).view(feature_mean.shape[0])


def update_running_stats(
    running_mean: Tensor, running_var: Tensor, feature_mean: Tensor, feature_var: Tensor, batch: int, momentum: float
) -> None:
    """In-place EMA like the reference, including its quirk: the (already unbiased) batch variance is
    multiplied by B/(B−1) once more before entering running_var."""
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(feature_mean.detach(), alpha=momentum)
        running_var.mul_(1 - momentum).add_(feature_var.detach() * (batch / (batch - 1)), alpha=momentum)


# E[softplus(μ + ε)], ε ~ N(0, 1). softplus(t) = t + softplus(−t) gives g(μ) = max(μ, 0) + q(|μ|) with
# q(t) = E[softplus(ε − t)] for t ≥ 0: a smooth function falling from 0.806 to 3.4e-9 at t = 20. q is stored as
# a piecewise polynomial: 32 segments of length 1/ESP_SCALE = 0.625 on [0, ESP_LIMIT), each of degree 6 in
# u = t·ESP_SCALE − k ∈ [0, 1), least-squares fits to q by quadrature (`benchmarks/fit_expected_softplus.py`
# measures their error; the coefficients are in `esp_coefficients.json`); 0 from ESP_LIMIT on.
# No exp and no division: the fused kernels (`mp_hub.kernels`) evaluate the same table, each coefficient of
# every lane's segment picked by one register permute (it replaced a (5, 5) rational times an exp).
ESP_SCALE = 1.6
ESP_LIMIT = 20.0
ESP_DEGREE = 6
ESP_TABLE = tuple(  # (32, 7): a row of coefficients per segment
    ESP_COEFFICIENTS[k : k + ESP_DEGREE + 1] for k in range(0, len(ESP_COEFFICIENTS), ESP_DEGREE + 1)
)


@lru_cache(maxsize=16)
def _esp_table(dtype: torch.dtype, device: torch.device) -> Tensor:
    """ESP_TABLE as a (32, 7) tensor, built once per dtype and device (not on every call of a site's forward:
    a tensor construction on CPU, a host-to-device copy on a GPU)."""
    return torch.tensor(ESP_TABLE, dtype=dtype, device=device)


def esp_table(dtype: torch.dtype, device: torch.device) -> Tensor:
    """ESP_TABLE on `device`: the cached tensor eagerly; under torch.compile built at trace time, a constant of the
    graph (dynamo would skip the cache anyway, with a warning)."""
    if torch.compiler.is_compiling():
        return _esp_table.__wrapped__(dtype, device)
    return _esp_table(dtype, device)


def expected_softplus(mu: Tensor) -> Tensor:
    """E[softplus(μ + ε)] for ε ~ N(0, 1), deterministic and differentiable (piecewise polynomial, see ESP_TABLE).
    A float16 / bfloat16 μ is evaluated in float32 (the degree-6 polynomial loses digits in half precision) and the
    result given back in μ's dtype."""
    if mu.dtype in (torch.float16, torch.bfloat16):
        return expected_softplus(mu.float()).to(mu.dtype)
    t = mu.abs()
    inside = t < ESP_LIMIT  # false for inf and nan too: their segment index would be meaningless
    v = torch.where(inside, t, torch.zeros_like(t)) * ESP_SCALE
    segment = v.detach().floor().clamp_(max=len(ESP_TABLE) - 1)
    u = v - segment
    coeffs = esp_table(mu.dtype, mu.device)[segment.long()]
    q = coeffs[..., -1]
    for j in range(coeffs.shape[-1] - 2, -1, -1):
        q = q * u + coeffs[..., j]
    return F.relu(mu) + torch.where(inside, q, torch.zeros_like(q))


def apply_perturbation(
    x: Tensor, noise: Tensor, scale: Tensor, noise_coeff: float | Tensor, clip_value: float
) -> Tensor:
    """y = min(x ⊙ (κ·(s ⊙ z) + 1 − κ), clip), with z the (softplus) noise and s per channel."""
    multiplier = (noise * scale.view(1, -1, 1, 1) - 1) * noise_coeff + 1
    return torch.clamp(x * multiplier, max=clip_value)
