"""mp_hub.schedules: the noise coefficient's linear ramp, the step learning-rate schedule, and every learning-rate
schedule `build_lr_scheduler` knows."""

import pytest
import torch

from mp_hub.errors import ConfigError
from mp_hub.schedules import (
    LR_SCHEDULER_TYPES,
    METRIC_LR_SCHEDULER_TYPES,
    build_lr_scheduler,
    linear_noise_coeff,
    step_lr_lambda,
)


def test_noise_coeff_and_step_lr_schedules():
    assert [linear_noise_coeff(t, 10, 0.4) for t in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert linear_noise_coeff(0, 10, 0.0) == 1.0
    with pytest.raises(ConfigError):
        linear_noise_coeff(0, 10, 1.5)
    factor = step_lr_lambda(100)
    assert [factor(t) for t in (0, 39, 40, 69, 70, 89, 90, 99)] == pytest.approx(
        [1, 1, 0.3, 0.3, 0.09, 0.09, 0.027, 0.027]
    )


# The arguments a schedule cannot do without (transformers asks for them through scheduler_specific_kwargs).
REQUIRED_KWARGS = {
    "cosine_with_min_lr": {"min_lr_rate": 0.1},
    "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
    "warmup_stable_decay": {"num_decay_steps": 4},
}


def _lrs(kind: str, kwargs: dict | None = None, steps: int = 10) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(
        optimizer, kind, num_training_steps=steps, num_warmup_steps=2, scheduler_kwargs=kwargs
    )
    lrs = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step(1.0) if kind in METRIC_LR_SCHEDULER_TYPES else scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("kind", LR_SCHEDULER_TYPES)
def test_every_schedule_builds_and_steps(kind):
    lrs = _lrs(kind, REQUIRED_KWARGS.get(kind))
    assert len(lrs) == 10 and all(0.0 <= lr <= 1.0 for lr in lrs)


def test_the_schedules_are_the_ones_named():
    assert _lrs("step", steps=10) == pytest.approx([1, 1, 1, 0.3, 0.3, 0.3, 0.09, 0.09, 0.027, 0.027])
    assert _lrs("step", {"milestones": [0.5], "gamma": 0.1}) == pytest.approx([1] * 4 + [0.1] * 6)
    assert _lrs("linear")[:3] == pytest.approx([0.5, 1.0, 0.875])  # 2 warm-up steps, then down to 0
    assert _lrs("cosine_with_min_lr", {"min_lr_rate": 0.1})[-1] == pytest.approx(0.1)
    assert set(METRIC_LR_SCHEDULER_TYPES) == {"reduce_lr_on_plateau", "greedy"}
    assert {"step", "linear", "cosine", "constant", "polynomial", "inverse_sqrt"} <= set(LR_SCHEDULER_TYPES)


@pytest.mark.parametrize(
    ("kind", "kwargs", "match"),
    [
        ("cosine_with_min_lr", None, "min_lr"),
        ("warmup_stable_decay", None, "num_decay_steps"),
        ("cosine", {"num_cycle": 2}, "num_cycle"),
        ("constant", {"factor": 2}, "takes no arguments"),
        ("step", {"gama": 0.1}, "gama"),
        ("step", {"gamma": 0}, "gamma must be a number in"),
        ("step", {"milestones": [1.5]}, "fractions in"),
        ("step", {"milestones": "late"}, "fractions in"),
        ("cosine_annealing", None, "unknown learning-rate schedule"),
    ],
)
def test_a_schedule_refuses_wrong_or_missing_arguments(kind, kwargs, match):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match=match):
        build_lr_scheduler(optimizer, kind, num_training_steps=10, scheduler_kwargs=kwargs)
