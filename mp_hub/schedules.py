"""Schedules of the transfer recipe and the Trainer callback: κ warm-up, the paper's step learning rate, and
`build_lr_scheduler` (that one or any transformers `SchedulerType`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from transformers import SchedulerType, get_scheduler

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


# Every transformers `SchedulerType`, and the paper's step schedule (the recipe's default).
LR_SCHEDULER_TYPES = ("step", *(kind.value for kind in SchedulerType))
# Stepped with an evaluation metric instead of once per optimizer step (as the Trainer does).
METRIC_LR_SCHEDULER_TYPES = (SchedulerType.REDUCE_ON_PLATEAU.value, SchedulerType.GREEDY.value)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    scheduler_type: str,
    *,
    num_training_steps: int,
    num_warmup_steps: int = 0,
    scheduler_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """The learning-rate schedule `scheduler_type` (one of `LR_SCHEDULER_TYPES`) of `optimizer`.

    "step" is the paper's: × `gamma` at the `milestones` fractions of `num_training_steps` (`scheduler_kwargs` may
    set either); every other name is `transformers.get_scheduler`'s, with `scheduler_kwargs` as its
    `scheduler_specific_kwargs` (e.g. {"min_lr_rate": 0.1} for cosine_with_min_lr). Those in
    `METRIC_LR_SCHEDULER_TYPES` are stepped with a metric (`scheduler.step(eval_loss)`). An unknown name, or
    arguments the schedule does not take or lacks, are a ConfigError naming them.
    """
    kwargs = dict(scheduler_kwargs or {})
    if scheduler_type not in LR_SCHEDULER_TYPES:
        raise ConfigError(f"unknown learning-rate schedule {scheduler_type!r}; one of {list(LR_SCHEDULER_TYPES)}")
    if scheduler_type == "step":
        unknown = sorted(set(kwargs) - {"milestones", "gamma"})
        if unknown:
            raise ConfigError(f"the 'step' schedule takes 'milestones' and 'gamma', not {unknown}")
        gamma = kwargs.get("gamma", PAPER_LR_GAMMA)
        if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not 0 < gamma <= 1:
            raise ConfigError(f"the 'step' schedule's gamma must be a number in (0, 1], got {gamma!r}")
        try:
            factor = step_lr_lambda(num_training_steps, **kwargs)
        except TypeError as err:  # milestones that are not numbers
            raise ConfigError(f"the 'step' schedule's milestones must be fractions in (0, 1): {err}") from err
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if scheduler_type == SchedulerType.CONSTANT.value and kwargs:  # get_scheduler would drop them silently
        raise ConfigError(f"the 'constant' schedule takes no arguments, got {sorted(kwargs)}")
    try:
        return get_scheduler(
            scheduler_type,
            optimizer,
            num_warmup_steps=num_warmup_steps,
            num_training_steps=num_training_steps,
            scheduler_specific_kwargs=kwargs,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"learning-rate schedule {scheduler_type!r} with arguments {kwargs}: {err}") from err
