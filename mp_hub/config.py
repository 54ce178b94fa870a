"""`MetaPerturbConfig`: the hyper-parameters of φ, JSON types only.

C₀ (`channel_norm`) is stored as a default only: the attachment decides the normalisers of each site.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"


def _package_version() -> str:
    from . import __version__

    return __version__


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
        if not isinstance(self.h_dim, int) or self.h_dim < 1:
            raise ConfigError(f"h_dim must be a positive int, got {self.h_dim!r}")
        if not isinstance(self.kernel_size, int) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be a positive odd int, got {self.kernel_size!r}")
        if not self.init_std >= 0:
            raise ConfigError(f"init_std must be >= 0, got {self.init_std!r}")
        if not self.clip_value > 0:
            raise ConfigError(f"clip_value must be > 0, got {self.clip_value!r}")
        if not self.channel_norm > 0:
            raise ConfigError(f"channel_norm (C0) must be > 0, got {self.channel_norm!r}")
        if not isinstance(self.provenance, dict):
            raise ConfigError(f"provenance must be a dict, got {type(self.provenance).__name__}")

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
                _package_version(),
                ", ".join(dropped),
            )
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as err:
            raise ConfigError(f"invalid MetaPerturb config: {err}") from err

    def save(self, directory: str | Path) -> Path:
        """Write config.json, stamping the mp_hub version that wrote it."""
        self.mp_hub_version = _package_version()
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_json_file(cls, path: str | Path) -> MetaPerturbConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise ConfigError(f"{path} does not exist") from err
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(data)
