"""Fit the piecewise polynomial of `mp_hub.functional.expected_softplus` and print its error.

    python benchmarks/fit_expected_softplus.py [--check-only]

q(t) = E[softplus(ε − t)], ε ~ N(0, 1), t ≥ 0, by trapezoid quadrature on a fine grid (float64; for a smooth
integrand under a Gaussian the trapezoid rule converges faster than any power of the step). Per segment
[k·h, (k + 1)·h) of [0, ESP_LIMIT), a least-squares polynomial of degree 6 in u = t/h − k ∈ [0, 1). Prints
the coefficients (paste them into `mp_hub/esp_coefficients.py`), then the committed table's max error against
quadrature.
The last line printed is JSON with the figures and the git commit.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from _common import git_commit

from mp_hub.functional import ESP_LIMIT, ESP_SCALE, ESP_TABLE

DEGREE = 6
GRID = np.linspace(-14.0, 14.0, 56001)
WEIGHT = np.exp(-(GRID**2) / 2) / np.sqrt(2 * np.pi) * (GRID[1] - GRID[0])


def q(t: np.ndarray) -> np.ndarray:
    out = np.empty(len(t))
    for start in range(0, len(t), 256):  # chunks: a (256, grid) matrix at a time
        chunk = t[start : start + 256, None]
        out[start : start + 256] = (np.logaddexp(0.0, GRID[None, :] - chunk) * WEIGHT).sum(axis=1)
    return out


def fit(segments: int) -> np.ndarray:
    u = np.linspace(0.0, 1.0, 201)
    basis = np.vander(u, DEGREE + 1, increasing=True)
    return np.stack([np.linalg.lstsq(basis, q((k + u) / ESP_SCALE), rcond=None)[0] for k in range(segments)])


def table_error(table: np.ndarray) -> float:
    u = np.linspace(0.0, 1.0, 1001)
    basis = np.vander(u, DEGREE + 1, increasing=True)
    return max(np.abs(basis @ table[k] - q((k + u) / ESP_SCALE)).max() for k in range(len(table)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check-only", action="store_true", help="only measure the committed table")
    args = parser.parse_args()
    segments = int(round(ESP_LIMIT * ESP_SCALE))
    if not args.check_only:
        table = fit(segments)
        print("ESP_COEFFICIENTS = (  # paste into mp_hub/esp_coefficients.py")
        flat = [float(v) for row in table for v in row]
        for k in range(0, len(flat), 4):
            print("    " + ", ".join(repr(v) for v in flat[k : k + 4]) + ",")
        print(")")
        print(f"refitted table: max abs error {table_error(table):.2e}")
    committed = table_error(np.array(ESP_TABLE))
    tail = float(q(np.array([ESP_LIMIT]))[0])
    print(f"committed table: max abs error {committed:.2e} on [0, {ESP_LIMIT:g}); q({ESP_LIMIT:g}) = {tail:.2e}")
    print(json.dumps({"benchmark": "fit_expected_softplus", "commit": git_commit(), "segments": segments,
                      "degree": DEGREE, "max_abs_error": committed, "tail_at_limit": tail}))  # fmt: skip


if __name__ == "__main__":
    main()
