"""Fit the piecewise polynomial of `mp_hub.functional.expected_softplus`, measure its error, and (with --write)
write the table that `mp_hub/esp_coefficients.py` loads.

    python benchmarks/fit_expected_softplus.py [--check-only] [--write [--table_file PATH]]

q(t) = E[softplus(ε − t)], ε ~ N(0, 1), t ≥ 0, by trapezoid quadrature on a fine grid (float64; for a smooth
integrand under a Gaussian the trapezoid rule converges faster than any power of the step). Per segment
[k·h, (k + 1)·h) of [0, ESP_LIMIT), a least-squares polynomial of degree 6 in u = t/h − k ∈ [0, 1). Prints the
refitted table's error and how far it is from the committed one (`mp_hub/esp_coefficients.json`), then the
committed table's max error against quadrature. --write replaces the committed table by the refit (the fused
kernels embed it: they are rebuilt on their next load).
The last line printed is JSON with the figures and the git commit, also written to
benchmarks/results/fit_expected_softplus.json (--results_dir, --results_file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _common import add_results_arguments, publish, results_name, results_path, write_text_atomic

from mp_hub.esp_coefficients import TABLE_FILE
from mp_hub.functional import ESP_DEGREE, ESP_LIMIT, ESP_SCALE, ESP_TABLE

DEGREE = ESP_DEGREE
GRID = np.linspace(-14.0, 14.0, 56001)
WEIGHT = np.exp(-(GRID**2) / 2) / np.sqrt(2 * np.pi) * (GRID[1] - GRID[0])
ABOUT = (
    "E[softplus(eps - t)], eps ~ N(0, 1), 0 <= t < limit: a degree-`degree` polynomial in u = t * scale - k on "
    "segment k; mp_hub/functional.py and the fused kernels read it"
)


def q(t: np.ndarray) -> np.ndarray:
    out = np.empty(len(t))
    for start in range(0, len(t), 256):  # chunks: a (256, grid) matrix at a time
        chunk = t[start : start + 256, None]
        out[start : start + 256] = (np.logaddexp(0.0, GRID[None, :] - chunk) * WEIGHT).sum(axis=1)
    return out


def fit_segment(k: int) -> np.ndarray:
    """The DEGREE + 1 coefficients (of u⁰ … u^DEGREE) of segment k."""
    u = np.linspace(0.0, 1.0, 201)
    basis = np.vander(u, DEGREE + 1, increasing=True)
    return np.linalg.lstsq(basis, q((k + u) / ESP_SCALE), rcond=None)[0]


def fit(segments: int) -> np.ndarray:
    return np.stack([fit_segment(k) for k in range(segments)])


def table_error(table: np.ndarray) -> float:
    u = np.linspace(0.0, 1.0, 1001)
    basis = np.vander(u, DEGREE + 1, increasing=True)
    return max(np.abs(basis @ table[k] - q((k + u) / ESP_SCALE)).max() for k in range(len(table)))


def table_text(table: np.ndarray) -> str:
    """The table file's text: its settings, then one line of coefficients per segment (floats as Python's repr,
    which reads back to the same double)."""
    head = {"about": ABOUT, "fitted_by": "benchmarks/fit_expected_softplus.py --write", "scale": ESP_SCALE,
            "limit": ESP_LIMIT, "degree": DEGREE}  # fmt: skip
    rows = [json.dumps([float(v) for v in row]) for row in table]
    lines = ["{", *(f"  {json.dumps(key)}: {json.dumps(value)}," for key, value in head.items())]
    lines += ['  "coefficients": [', ",\n".join("    " + row for row in rows), "  ]", "}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check-only", action="store_true", help="only measure the committed table")
    parser.add_argument("--write", action="store_true", help="replace the committed table by the refit")
    parser.add_argument("--table_file", "--table-file", type=Path, default=TABLE_FILE, help="where --write writes")
    add_results_arguments(parser)
    args = parser.parse_args()
    if args.check_only and args.write:
        parser.error("--write needs the refit: drop --check-only")
    segments = int(round(ESP_LIMIT * ESP_SCALE))
    committed_table = np.array(ESP_TABLE)
    figures = {"segments": segments, "degree": DEGREE}
    if not args.check_only:
        table = fit(segments)
        figures["refit_max_abs_error"] = table_error(table)
        figures["refit_max_coefficient_change"] = float(np.abs(table - committed_table).max())
        print(f"refitted table: max abs error {figures['refit_max_abs_error']:.2e}; coefficients differ from the "
              f"committed ones by at most {figures['refit_max_coefficient_change']:.2e}")  # fmt: skip
        if args.write:
            write_text_atomic(args.table_file, table_text(table))
            figures["written_to"] = str(args.table_file)
            print(f"wrote the refitted table to {args.table_file}")
            committed_table = table  # what the package loads from now on
    committed = table_error(committed_table)
    tail = float(q(np.array([ESP_LIMIT]))[0])
    print(f"committed table: max abs error {committed:.2e} on [0, {ESP_LIMIT:g}); q({ESP_LIMIT:g}) = {tail:.2e}")
    figures.update(max_abs_error=committed, tail_at_limit=tail)
    publish("fit_expected_softplus", figures, results_path(args, results_name("fit_expected_softplus")))


if __name__ == "__main__":
    main()
