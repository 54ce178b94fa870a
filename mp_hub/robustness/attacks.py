"""EoT-PGD: projected gradient ascent on the cross-entropy, its gradient averaged over the model's noise draws.

The MetaPerturb paper's protocol (its Figure 6): PGD with step 0.025·ε for L∞ and L2, 200 steps, the gradient of
each step averaged over 10 stochastic passes (Expectation over Transformation, Athalye et al. 2018), since a
perturbed model draws fresh noise on every pass. On a deterministic model (no sites, or sites in "mean" / "off"
mode) every draw is the same and EoT-PGD is plain PGD.

Written here, not taken from `torchattacks` (whose `EOTPGD` is the same algorithm): that package requires
torchvision, and no torchvision wheel sits beside mp_hub's torch without replacing it or breaking transformers'
imports; the Adversarial Robustness Toolbox has no expectation over a model's own noise (docs/robustness.md).
`benchmarks/robustness_crosscheck.py` checks this attack against torchattacks run in an environment of its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, InvalidInputError
from .specs import AttackSpec

PAPER_STEPS = 200
PAPER_EOT_SAMPLES = 10
PAPER_RELATIVE_STEP = 0.025  # the step size as a multiple of ε, for L∞ and L2
_TINY = 1e-12  # keeps a zero gradient or a zero perturbation from dividing by zero


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return value


def eot_pgd(
    classify: Callable[[Tensor], Tensor],
    pixels: Tensor,
    labels: Tensor,
    spec: AttackSpec,
    *,
    steps: int = PAPER_STEPS,
    eot_samples: int = PAPER_EOT_SAMPLES,
    relative_step: float = PAPER_RELATIVE_STEP,
    random_start: bool = True,
) -> Tensor:
    """Adversarial images within `spec`'s ε-ball around `pixels` (and within [0, 1]), after `steps` steps.

    `classify` maps images in [0, 1] pixel space to logits (normalising them as the model expects); it is called
    `eot_samples` times per step and the gradients of the cross-entropy summed, so a stochastic model's noise is
    averaged out of the direction (the caller puts the model in eval mode and picks its sites' mode). Each step
    moves `relative_step`·ε: along the gradient's sign (L∞) or its direction (L2), then projects back onto the
    ball and clips to [0, 1]. `random_start`: start from a uniform point of the ball (Madry et al.), else at
    `pixels`. Randomness (the start, the model's noise) comes from torch's global generator: seed it to repeat.
    Returns the last iterate, detached.
    """
    if not isinstance(spec, AttackSpec):
        raise ConfigError(f"spec must be an AttackSpec (see parse_attack_specs), got {type(spec).__name__}")
    check_positive_int("steps", steps)
    check_positive_int("eot_samples", eot_samples)
    if not relative_step > 0:
        raise ConfigError(f"relative_step (the step as a multiple of ε) must be > 0, got {relative_step!r}")
    if not isinstance(pixels, Tensor) or not pixels.is_floating_point() or pixels.dim() < 2:
        raise InvalidInputError("pixels must be a floating-point batch of images (B, ...) in [0, 1]")
    if labels.shape != pixels.shape[:1]:
        raise InvalidInputError(f"labels must have shape ({pixels.shape[0]},), got {tuple(labels.shape)}")
    clean = pixels.detach()
    step = relative_step * spec.epsilon
    adversarial = project(clean + random_offset(clean, spec), clean, spec) if random_start else clean.clone()
    for _ in range(steps):
        adversarial.requires_grad_(True)
        gradient = torch.zeros_like(clean)
        for _ in range(eot_samples):
            loss = F.cross_entropy(classify(adversarial).float(), labels, reduction="sum")
            gradient += torch.autograd.grad(loss, adversarial)[0]
        with torch.no_grad():
            adversarial = project(adversarial.detach() + step * ascent_direction(gradient, spec.norm), clean, spec)
    return adversarial.detach()


def ascent_direction(gradient: Tensor, norm: str) -> Tensor:
    """The steepest-ascent direction of unit `norm` for each image: sign(g) for L∞, g / ‖g‖₂ for L2."""
    if norm == "linf":
        return gradient.sign()
    return gradient / per_image_l2(gradient).clamp_min(_TINY)


def project(adversarial: Tensor, clean: Tensor, spec: AttackSpec) -> Tensor:
    """`adversarial` moved onto the ε-ball around `clean` (nearest point), then clipped to [0, 1]."""
    delta = adversarial - clean
    if spec.norm == "linf":
        delta = delta.clamp(-spec.epsilon, spec.epsilon)
    else:
        delta = delta * (spec.epsilon / per_image_l2(delta).clamp_min(_TINY)).clamp(max=1.0)
    return (clean + delta).clamp(0.0, 1.0)


def random_offset(clean: Tensor, spec: AttackSpec) -> Tensor:
    """A random start: uniform in the L∞ cube, or a uniform direction at a radius uniform in [0, ε] for L2."""
    if spec.norm == "linf":
        return torch.empty_like(clean).uniform_(-spec.epsilon, spec.epsilon)
    direction = torch.randn_like(clean)
    radius = torch.rand(clean.shape[:1] + (1,) * (clean.dim() - 1), dtype=clean.dtype, device=clean.device)
    return direction / per_image_l2(direction).clamp_min(_TINY) * radius * spec.epsilon


def per_image_l2(x: Tensor) -> Tensor:
    """‖x_b‖₂ for each image b, shaped to broadcast against x."""
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
