"""The coefficients of `functional.expected_softplus`'s piecewise polynomial, read from `esp_coefficients.json`
(written by `benchmarks/fit_expected_softplus.py --write`): 32 segments × 7 coefficients (of u⁰ … u⁶), segment
after segment."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import ConfigError

TABLE_FILE = Path(__file__).with_name("esp_coefficients.json")


def load_table(path: Path = TABLE_FILE) -> dict:
    """The table file's contents ({"scale", "limit", "degree", "coefficients": a row per segment, ...}), checked:
    every row has degree + 1 finite numbers."""
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
        degree, rows = table["degree"], table["coefficients"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a table of E[softplus] coefficients ({err!r})") from err
    for k, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == degree + 1):
            raise ConfigError(f"{path}: segment {k} has {row!r}, not {degree + 1} coefficients")
        if not all(isinstance(v, float) and math.isfinite(v) for v in row):
            raise ConfigError(f"{path}: segment {k} holds a value that is not a finite float: {row!r}")
    return table


ESP_COEFFICIENTS = tuple(v for row in load_table()["coefficients"] for v in row)
