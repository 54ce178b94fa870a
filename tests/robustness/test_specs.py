"""mp_hub.robustness.specs: "norm:ε" lists parsed into typed specs; every bad item is a ConfigError naming it."""

import math

import pytest

from mp_hub.errors import ConfigError
from mp_hub.robustness import AttackSpec, parse_attack_specs


def test_specs_parse_in_order_with_fractions_and_decimals():
    specs = parse_attack_specs("linf:2/255, LINF:8/255 ,l2:0.5")
    assert [(s.norm, s.text) for s in specs] == [("linf", "2/255"), ("linf", "8/255"), ("l2", "0.5")]
    assert math.isclose(specs[0].epsilon, 2 / 255) and specs[2].epsilon == 0.5
    assert [s.slug for s in specs] == ["linf_2_255", "linf_8_255", "l2_0.5"]
    assert str(specs[1]) == "linf:8/255"
    assert parse_attack_specs("linf:0")[0].epsilon == 0.0  # ε = 0: the clean images, scored as attacked ones


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "each attack is norm:ε"),
        ("linf", "each attack is norm:ε"),
        ("linf:", "each attack is norm:ε"),
        ("linf:8/255,", "each attack is norm:ε"),
        ("l1:0.5", "norm must be one of"),
        ("linf:abc", "a number or a fraction"),
        ("linf:1/0", "a number or a fraction"),
        ("linf:-1/255", "finite and >= 0"),
        ("l2:inf", "a number or a fraction"),
        ("linf:2", "above 1 covers every image"),
        ("linf:8/255,l2:1,linf:16/510", "listed twice"),
    ],
)
def test_bad_specs_are_config_errors_naming_the_item(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_attack_specs(text)


def test_specs_built_directly_are_checked_too():
    with pytest.raises(ConfigError, match="norm must be one of"):
        AttackSpec("l1", 0.1, "0.1")
    with pytest.raises(ConfigError, match="must be a number"):
        AttackSpec("l2", True, "1")
    with pytest.raises(ConfigError, match="finite"):
        AttackSpec("l2", float("nan"), "nan")
    with pytest.raises(ConfigError, match="must be a string"):
        parse_attack_specs(["linf:8/255"])
