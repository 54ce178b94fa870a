"""mp_hub.config: MetaPerturbConfig refuses bad hyper-parameter values with a ConfigError naming the field."""

import pytest

from mp_hub import ConfigError, MetaPerturbConfig


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [(dict(h_dim=0), "h_dim"), (dict(kernel_size=2), "kernel_size"), (dict(clip_value=0), "clip_value")],
)
def test_bad_config_values_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MetaPerturbConfig(**kwargs)
