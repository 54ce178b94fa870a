"""What to attack with: a norm and a radius ε in [0, 1] pixel space, parsed from text such as "linf:8/255,l2:0.5"."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from ..errors import ConfigError

NORMS = ("linf", "l2")


@dataclass(frozen=True)
class AttackSpec:
    """One threat model: perturbations δ with ‖δ‖ ≤ `epsilon` in `norm`, measured on pixels in [0, 1].

    `text` is the radius as written ("8/255", "0.5"); it names the result (`slug`) so that a run's keys read as
    its flags did.
    """

    norm: str
    epsilon: float
    text: str

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"attack norm must be one of {NORMS}, got {self.norm!r}")
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, int | float):
            raise ConfigError(f"attack ε must be a number, got {self.epsilon!r}")
        if not math.isfinite(self.epsilon) or self.epsilon < 0:
            raise ConfigError(f"attack ε must be finite and >= 0, got {self.epsilon!r}")
        if self.norm == "linf" and self.epsilon > 1:
            raise ConfigError(f"an L∞ ε above 1 covers every image in [0, 1] pixel space, got {self.epsilon!r}")

    @property
    def slug(self) -> str:
        """The spec in a result key: "linf_8_255", "l2_0.5"."""
        return f"{self.norm}_{self.text.replace('/', '_')}"

    def __str__(self) -> str:
        return f"{self.norm}:{self.text}"


def parse_epsilon(text: str) -> float:
    """A radius written as a decimal ("0.5") or a fraction ("8/255")."""
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError) as err:
        raise ConfigError(f"attack ε must be a number or a fraction such as 8/255, got {text!r}") from err
    return float(value)


def parse_attack_specs(text: str) -> list[AttackSpec]:
    """Comma-separated `norm:ε` items, e.g. "linf:2/255,linf:8/255,l2:0.5", in the order given.

    ε is in [0, 1] pixel space whatever the model's input normalisation (see `mp_hub.robustness.evaluate`). An
    empty list, an unknown norm, a bad number and a repeated spec are `ConfigError`s naming the item.
    """
    if not isinstance(text, str):
        raise ConfigError(f"attack specs must be a string such as 'linf:8/255,l2:0.5', got {type(text).__name__}")
    specs: list[AttackSpec] = []
    for item in text.split(","):
        item = item.strip()
        norm, sep, radius = item.partition(":")
        norm, radius = norm.strip().lower(), radius.strip()
        if not sep or not norm or not radius:
            raise ConfigError(f"each attack is norm:ε (e.g. linf:8/255 or l2:0.5), got {item!r} in {text!r}")
        if norm not in NORMS:
            raise ConfigError(f"attack norm must be one of {NORMS}, got {norm!r} in {text!r}")
        spec = AttackSpec(norm, parse_epsilon(radius), radius)
        if any((s.norm, s.epsilon) == (spec.norm, spec.epsilon) for s in specs):
            raise ConfigError(f"attack {item!r} is listed twice in {text!r}")
        specs.append(spec)
    return specs
