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


# E[softplus(μ + ε)], ε ~ N(0, 1). softplus(t) = t + softplus(−t) gives g(μ) = max(μ, 0) + q(|μ|) with
# q(t) = E[softplus(ε − t)] for t ≥ 0: a smooth function falling from 0.806 to 3.4e-9 at t = 20. q is stored as
# a piecewise polynomial: 32 segments of length 1/ESP_SCALE = 0.625 on [0, ESP_LIMIT), each of degree 6 in
# u = t·ESP_SCALE − k ∈ [0, 1), least-squares fits to q by quadrature (`benchmarks/fit_expected_softplus.py`);
# 0 from ESP_LIMIT on. Max abs error of g: 1.5e-10 in float64 (3.4e-9 at the cut), ~5e-7 in float32 (rounding).
# No exp and no division: the fused kernels (`mp_hub.kernels`) evaluate the same table, each coefficient of
# every lane's segment picked by one register permute (it replaced a (5, 5) rational times an exp).
ESP_SCALE = 1.6
ESP_LIMIT = 20.0
ESP_TABLE = (
    (
        0.8060591832713835,
        -0.31249999611317114,
        0.04035560495612224,
        2.8097478217344767e-07,
        -0.0003974358500221107,
        9.398433889160544e-07,
        4.816968856913475e-06,
    ),
    (
        0.533523393835439,
        -0.2333440816730445,
        0.03805330510103752,
        -0.0014834374464038614,
        -0.00032333313671249585,
        3.0800046691346315e-05,
        1.7107716366754595e-06,
    ),
    (
        0.3364583572593849,
        -0.1628168541544149,
        0.031996456421884,
        -0.002434747171298064,
        -0.00014680388255175776,
        4.041558133873187e-05,
        -1.6607701159281327e-06,
    ),
    (
        0.2030951631870407,
        -0.10652329010534062,
        0.024190555607830653,
        -0.0026513866048854893,
        2.9124074363089814e-05,
        2.9233202812869407e-05,
        -2.941144836135275e-06,
    ),
    (
        0.11816645826214445,
        -0.06585132599943513,
        0.016659393442171645,
        -0.002301578548453381,
        0.0001317932721766253,
        1.0930454795608947e-05,
        -2.228865084112601e-06,
    ),
    (
        0.0668134421103368,
        -0.038868822451761875,
        0.010621365767752225,
        -0.001709667830732672,
        0.00015421788932768978,
        -2.405009489864246e-06,
        -9.310793193594882e-07,
    ),
    (
        0.03700719946292261,
        -0.022155833160710237,
        0.006379708671566218,
        -0.0011353801227030928,
        0.00012908511581040023,
        -7.69770468654389e-06,
        -3.217001638508738e-08,
    ),
    (
        0.02021705011948877,
        -0.012324896321389642,
        0.0036706418350651053,
        -0.0006965919827644478,
        9.045697947677227e-05,
        -7.664213187823914e-06,
        3.1467374120727237e-07,
    ),
    (
        0.01094931109317508,
        -0.006747993297493702,
        0.0020516878733694384,
        -0.0004050834084109359,
        5.688539885171995e-05,
        -5.679213092799955e-06,
        3.363549128065668e-07,
    ),
    (
        0.0058994647952918455,
        -0.003658704037627203,
        0.0011259981914986264,
        -0.00022760121173137667,
        3.345493537532996e-05,
        -3.6427020646839674e-06,
        2.4922750126924255e-07,
    ),
    (
        0.003169219191562252,
        -0.0019724097334030415,
        0.0006112300161606285,
        -0.0001252268312096622,
        1.8893586776482828e-05,
        -2.157080920607464e-06,
        1.5829560182585465e-07,
    ),
    (
        0.0016997074396606778,
        -0.0010598915353727321,
        0.0003297106089563233,
        -6.806147973385542e-05,
        1.04198165752351e-05,
        -1.220957064966516e-06,
        9.291917890175946e-08,
    ),
    (
        0.0009107568091171413,
        -0.0005685228039647272,
        0.00017722674048248116,
        -3.673652507265351e-05,
        5.669537905693024e-06,
        -6.738192108738618e-07,
        5.2280705181777643e-08,
    ),
    (
        0.00048777221816727025,
        -0.000304656185900617,
        9.507892992827596e-05,
        -1.9752930848336562e-05,
        3.0618294450231016e-06,
        -3.66700874008819e-07,
        2.8747378593571094e-08,
    ),
    (
        0.0002611659062912864,
        -0.0001631708369459117,
        5.09544870862561e-05,
        -1.0598828993566755e-05,
        1.646773760482188e-06,
        -1.9804472938107953e-07,
        1.5611819841934953e-08,
    ),
    (
        0.00013981506773803873,
        -8.736781642279672e-05,
        2.729191831252102e-05,
        -5.680591485365649e-06,
        8.837349068990201e-07,
        -1.065167825422773e-07,
        8.421626104965042e-09,
    ),
    (
        7.484421759413049e-05,
        -4.677287370734889e-05,
        1.461346354708364e-05,
        -3.042741660574171e-06,
        4.7368546683059486e-07,
        -5.716164649794098e-08,
        4.5266012715860085e-09,
    ),
    (
        4.0063116033893024e-05,
        -2.5038081022548994e-05,
        7.823501174989489e-06,
        -1.6292764157369277e-06,
        2.537340303742441e-07,
        -3.063877172396557e-08,
        2.4283321550165885e-09,
    ),
    (
        2.1444783274905463e-05,
        -1.3402597102972795e-05,
        4.188042061915932e-06,
        -8.722649386027341e-07,
        1.3586810664142713e-07,
        -1.6411906819952783e-08,
        1.3013480056881503e-09,
    ),
    (
        1.1478720796683398e-05,
        -7.174087587506922e-06,
        2.2418187920286855e-06,
        -4.6694025920656345e-07,
        7.274045799146227e-08,
        -8.788146197646583e-09,
        6.970075724955615e-10,
    ),
    (
        6.144161036508097e-06,
        -3.840068049253583e-06,
        1.1999939210506206e-06,
        -2.4994957720095416e-07,
        3.893960424611981e-08,
        -4.704954811358454e-09,
        3.73209183768882e-10,
    ),
    (
        3.2887451764102955e-06,
        -2.0554562628745886e-06,
        6.423204293593286e-07,
        -1.3379251318167088e-07,
        2.084414132451748e-08,
        -2.518667163038126e-09,
        1.998011409659371e-10,
    ),
    (
        1.7603420978880323e-06,
        -1.1002110263469492e-06,
        3.4381220688060437e-07,
        -7.161515950357323e-08,
        1.1157429659343007e-08,
        -1.348227431515652e-09,
        1.0695634970574054e-10,
    ),
    (
        9.422442736798055e-07,
        -5.889018352200475e-07,
        1.8403023136053434e-07,
        -3.8333172895054076e-08,
        5.972246259871274e-09,
        -7.216776495752766e-10,
        5.7252618623256224e-11,
    ),
    (
        5.043473161115072e-07,
        -3.1521681278327123e-07,
        9.850451899700858e-08,
        -2.0518366387537035e-08,
        3.1967430114409853e-09,
        -3.862929452650866e-10,
        3.064598088707362e-11,
    ),
    (
        2.699577508913679e-07,
        -1.6872350900240887e-07,
        5.2725736730692886e-08,
        -1.0982718039125075e-08,
        1.7111018109263648e-09,
        -2.067696434920373e-10,
        1.6403858596941623e-11,
    ),
    (
        1.444979960212876e-07,
        -9.03112172523834e-08,
        2.8222072408765315e-08,
        -5.8786333504992215e-09,
        9.158892580750264e-10,
        -1.1067636779399627e-10,
        8.78042362442178e-12,
    ),
    (
        7.734421082779868e-08,
        -4.834011998187609e-08,
        1.5106192307513397e-08,
        -3.1466079780184796e-09,
        4.902408968942669e-10,
        -5.924094909858693e-11,
        4.699842362632672e-12,
    ),
    (
        4.139937479788957e-08,
        -2.5874604204421417e-08,
        8.085763653864411e-09,
        -1.6842585383086963e-09,
        2.624072445999997e-10,
        -3.1709440446117064e-11,
        2.5156501541803682e-12,
    ),
    (
        2.2159489073575572e-08,
        -1.384967833314675e-08,
        4.32799785666737e-09,
        -9.015188194278936e-10,
        1.4045653438855662e-10,
        -1.6972853375927645e-11,
        1.3465321545925725e-12,
    ),
    (
        1.1861119942792316e-08,
        -7.413198816651636e-09,
        2.3166104450719467e-09,
        -4.825483050606266e-10,
        7.51809818180672e-11,
        -9.084917479703465e-12,
        7.207472047688232e-13,
    ),
    (
        6.348800051979423e-09,
        -3.967999447952519e-09,
        1.2399922533060844e-09,
        -2.5828951054748695e-10,
        4.0241484471513395e-11,
        -4.862806975971881e-12,
        3.8578831523497904e-13,
    ),
)


def expected_softplus(mu: Tensor) -> Tensor:
    """E[softplus(μ + ε)] for ε ~ N(0, 1), deterministic and differentiable (piecewise polynomial, see ESP_TABLE)."""
    t = mu.abs()
    inside = t < ESP_LIMIT  # false for inf and nan too: their segment index would be meaningless
    v = torch.where(inside, t, torch.zeros_like(t)) * ESP_SCALE
    segment = v.detach().floor().clamp_(max=len(ESP_TABLE) - 1)
    u = v - segment
    coeffs = torch.tensor(ESP_TABLE, dtype=mu.dtype, device=mu.device)[segment.long()]
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
