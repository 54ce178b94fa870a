"""`MetaPerturbConfig`: the hyper-parameters of φ, JSON types only.

C₀ (`channel_norm`) is stored as a default only: the attachment decides the normalisers of each site.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError
from .version import __version__

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"


def read_json_file(path: str | Path) -> Any:
    """bytes → UTF-8 → JSON, each failure a `CheckpointError` naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} does not exist") from err
    except OSError as err:
        raise CheckpointError(f"{path} could not be read: {err}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path} is not UTF-8 text (bad byte at offset {err.start}): it is corrupted") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON (truncated or corrupted?): {err}") from err


def describe(value: Any) -> str:
    """`value` as a message shows it: its repr (cut short) and its type."""
    text = repr(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} ({type(value).__name__})"


def is_int(value: Any) -> bool:
    """An int and not a bool (bool is an int subclass, and `true` in JSON must not pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """An int (not a bool) or a finite float; an int is never passed to math.isfinite (a huge one overflows)."""
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _field_problems(values: dict[str, Any]) -> list[str]:
    checks = {
        "h_dim": (lambda v: is_int(v) and v >= 1, "a positive int"),
        "kernel_size": (lambda v: is_int(v) and v >= 1 and v % 2 == 1, "a positive odd int"),
        "init_std": (lambda v: is_finite_number(v) and v >= 0, "a finite number >= 0"),
        "clip_value": (lambda v: is_finite_number(v) and v > 0, "a finite number > 0"),
        "channel_norm": (lambda v: is_finite_number(v) and v > 0, "a finite number > 0 (C0)"),
        "provenance": (lambda v: isinstance(v, dict), "a dict"),
        "mp_hub_version": (lambda v: v is None or isinstance(v, str), "a string or null"),
    }
    return [
        f"{name} must be {expected}, got {describe(values[name])}"
        for name, (valid, expected) in checks.items()
        if name in values and not valid(values[name])
    ]


def validate_config_fields(values: dict[str, Any]) -> None:
    """The one check of φ's config fields (types strictly, and ranges), for every way a config is made or loaded."""
    problems = _field_problems(values)
    if problems:
        raise ConfigError("invalid MetaPerturb config: " + "; ".join(problems))


@dataclass
class MetaPerturbConfig:
    h_dim: int = 4
    kernel_size: int = 3
    init_std: float = 0.01
    clip_value: float = 100.0
    channel_norm: float = 64
    provenance: dict[str, Any] = field(default_factory=dict)
    mp_hub_version: str | None = None

    def __post_init__(self) -> None:
        validate_config_fields({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @property
    def num_parameters(self) -> int:
        """Two channel-equivariant ops (λ, γ each), h_dim scale kernels, and Linear(2·h_dim + 2 → 1)."""
        k2 = self.kernel_size**2
        return 4 * k2 + self.h_dim * k2 + 2 * self.h_dim + 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetaPerturbConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a MetaPerturb config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        dropped = sorted(set(data) - known)
        if dropped:
            logger.warning(
                "config written by mp_hub %s has keys this version (%s) does not know; dropped: %s",
                data.get("mp_hub_version", "?"),
                __version__,
                ", ".join(dropped),
            )
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as err:
            raise ConfigError(f"invalid MetaPerturb config: {err}") from err

    def save(self, directory: str | Path) -> Path:
        """Write config.json, stamping the mp_hub version that wrote it."""
        self.mp_hub_version = __version__
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_json_file(cls, path: str | Path) -> MetaPerturbConfig:
        """The config in `path`; a file that is missing, not UTF-8 JSON or holds an invalid field: `CheckpointError`."""
        data = read_json_file(path)
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise CheckpointError(f"{path}: {err}") from err
