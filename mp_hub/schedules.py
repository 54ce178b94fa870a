"""Schedules of the transfer recipe and the Trainer callback: κ warm-up and the paper's step learning rate."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .errors import ConfigError

# The authors' train_tgt.py: lr × 0.3 at 40%, 70% and 90% of training.
PAPER_LR_MILESTONES = (0.4, 0.7, 0.9)
PAPER_LR_GAMMA = 0.3


def linear_noise_coeff(step: int, total_steps: int, anneal_fraction: float = 0.4) -> float:
    """κ at (0-based) `step`: 0 → 1 linearly over the first `anneal_fraction` of `total_steps`, then 1.

    Starting from κ = 0 lets the model first fit the data with φ switched off, as in the authors' code.
    """
    if not 0.0 <= anneal_fraction <= 1.0:
        raise ConfigError(f"noise anneal fraction must be in [0, 1], got {anneal_fraction!r}")
    ramp = anneal_fraction * max(int(total_steps), 0)
    if ramp <= 0:
        return 1.0
    return min(1.0, max(step, 0) / ramp)


def step_lr_lambda(
    total_steps: int, milestones: Sequence[float] = PAPER_LR_MILESTONES, gamma: float = PAPER_LR_GAMMA
) -> Callable[[int], float]:
    """LR multiplier for `torch.optim.lr_scheduler.LambdaLR`: × `gamma` at each milestone fraction of training."""
    if any(not 0.0 < m < 1.0 for m in milestones):
        raise ConfigError(f"milestones must be fractions in (0, 1), got {list(milestones)}")
    boundaries = sorted(int(round(m * total_steps)) for m in milestones)

    def factor(step: int) -> float:
        return gamma ** sum(step >= b for b in boundaries)

    return factor
