"""mp_hub.schedules: the noise coefficient's linear ramp and the step learning-rate schedule."""

import pytest

from mp_hub.errors import ConfigError
from mp_hub.schedules import linear_noise_coeff, step_lr_lambda


def test_noise_coeff_and_step_lr_schedules():
    assert [linear_noise_coeff(t, 10, 0.4) for t in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert linear_noise_coeff(0, 10, 0.0) == 1.0
    with pytest.raises(ConfigError):
        linear_noise_coeff(0, 10, 1.5)
    factor = step_lr_lambda(100)
    assert [factor(t) for t in (0, 39, 40, 69, 70, 89, 90, 99)] == pytest.approx(
        [1, 1, 0.3, 0.3, 0.09, 0.09, 0.027, 0.027]
    )
