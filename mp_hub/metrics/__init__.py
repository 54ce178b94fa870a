"""Metrics as local `evaluate` modules (accuracy, nll, ece) plus the calibration maths they share.

Each metric lives in ``METRICS_DIR/<name>/<name>.py`` so that ``evaluate.load(path)`` finds it offline.
The ECE maths lives here, in :func:`expected_calibration_error`, and the ``ece`` module calls it; the inputs of
the probability metrics (``nll``, ``ece``) are declared and converted here too (:func:`probability_features`,
:func:`probability_inputs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import ConfigError, InvalidInputError

METRICS_DIR = Path(__file__).resolve().parent

__all__ = [
    "METRICS_DIR",
    "ReliabilityBin",
    "available_metrics",
    "expected_calibration_error",
    "load_metric",
    "plot_reliability_diagram",
    "probability_features",
    "probability_inputs",
    "reliability_diagram_data",
]


def available_metrics() -> list[str]:
    """Names of the metric modules shipped in ``METRICS_DIR`` (folders holding ``<name>/<name>.py``)."""
    return sorted(p.name for p in METRICS_DIR.iterdir() if p.is_dir() and (p / f"{p.name}.py").is_file())


def load_metric(name: str, **kwargs: Any):
    """``evaluate.load`` one of the local metric modules by path (works with ``HF_EVALUATE_OFFLINE=1``).

    ``kwargs`` go to ``evaluate.load`` (e.g. ``keep_in_memory=True``, ``experiment_id=...``).
    """
    names = available_metrics()
    if name not in names:
        raise ConfigError(f"unknown metric {name!r}; available metrics: {', '.join(names)}")
    import evaluate

    return evaluate.load(str(METRICS_DIR / name), **kwargs)


def probability_features():
    """The ``datasets.Features`` of the probability metrics: (N, C) float64 ``probabilities``, int64 ``references``."""
    import datasets

    return datasets.Features(
        {"probabilities": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
    )


def probability_inputs(probabilities: Any, references: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A probability metric's inputs as a float64 tensor of probabilities and a long tensor of class ids.

    Only the conversion (an :class:`InvalidInputError` if ``probabilities`` is not numeric); each metric checks the
    shapes and values it needs.
    """
    try:
        probs = torch.as_tensor(probabilities, dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"probabilities must be an (N, C) array of floats: {err}") from err
    return probs, torch.as_tensor(references, dtype=torch.long)


class ReliabilityBin(NamedTuple):
    """One confidence bin ``(lower, upper]``; ``confidence``/``accuracy`` are 0.0 where ``count`` is 0."""

    lower: float
    upper: float
    confidence: float
    accuracy: float
    count: int


def _bin_stats(probs: torch.Tensor, labels: torch.Tensor, n_bins: int):
    """Per-bin (sum of confidences, number correct, count) as float64 tensors, and the bin edges."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ConfigError(f"n_bins must be a positive int, got {n_bins!r}")
    probs = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    labels = torch.as_tensor(labels).detach().to("cpu")
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise InvalidInputError(f"probs must have shape (N, C) with N, C >= 1, got {tuple(probs.shape)}")
    if labels.shape != (probs.shape[0],):
        raise InvalidInputError(f"labels must have shape ({probs.shape[0]},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise InvalidInputError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if not torch.isfinite(probs).all():
        raise InvalidInputError("probs contain NaN or infinite values")
    if (probs < 0).any() or (probs > 1 + 1e-6).any():
        raise InvalidInputError(f"probs must lie in [0, 1], got values in [{probs.min():.4g}, {probs.max():.4g}]")
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels.long()).to(torch.float64)
    # Exact k / n_bins (correctly rounded), so e.g. a confidence 0.2 sits on the upper edge of bin (2/15, 3/15].
    edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins
    # bucketize(right=False): index i with edges[i] < c <= edges[i + 1] (c <= 1/n_bins -> bin 0, c > 1 -> last bin).
    index = torch.bucketize(confidence, edges[1:-1], right=False)
    zeros = torch.zeros(n_bins, dtype=torch.float64)
    conf_sum = zeros.index_add(0, index, confidence)
    correct_sum = zeros.index_add(0, index, correct)
    count = zeros.index_add(0, index, torch.ones_like(confidence))
    return conf_sum, correct_sum, count, edges


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE (Guo et al., 2017): ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` over ``n_bins`` equal bins of (0, 1].

    ``probs`` is ``(N, C)`` class probabilities, ``labels`` is ``(N,)`` class ids. Confidence = max prob,
    correct = argmax == label; a confidence ``c`` goes to the bin with ``lower < c <= upper``.
    """
    conf_sum, correct_sum, count, _ = _bin_stats(probs, labels, n_bins)
    # |B| * |acc - conf| = |correct_sum - conf_sum|, so empty bins contribute 0 without a division.
    return float((correct_sum - conf_sum).abs().sum() / count.sum())


def reliability_diagram_data(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> list[ReliabilityBin]:
    """Per-bin mean confidence, accuracy and count (one :class:`ReliabilityBin` per bin, empty ones included)."""
    conf_sum, correct_sum, count, edges = _bin_stats(probs, labels, n_bins)
    safe = count.clamp_min(1.0)
    conf, acc = (conf_sum / safe).tolist(), (correct_sum / safe).tolist()
    lo, hi, n = edges[:-1].tolist(), edges[1:].tolist(), count.long().tolist()
    return [ReliabilityBin(lo[b], hi[b], conf[b], acc[b], n[b]) for b in range(n_bins)]


def plot_reliability_diagram(probs: torch.Tensor, labels: torch.Tensor, path: str | Path, n_bins: int = 15) -> Path:
    """Write a reliability diagram (accuracy per confidence bin vs. the diagonal, ECE in the title) as a PNG.

    matplotlib is imported here, lazily, and drawn with the Agg canvas; returns ``path``.
    """
    bins = reliability_diagram_data(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width = 1.0 / n_bins
    centers = [(b.lower + b.upper) / 2 for b in bins]
    acc = [b.accuracy for b in bins]
    gap = [b.confidence - b.accuracy for b in bins]  # both 0.0 in empty bins
    fig = Figure(figsize=(4.5, 4.5))
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    ax = fig.add_subplot()
    ax.bar(centers, acc, width=width, edgecolor="black", color="tab:blue", label="accuracy")
    ax.bar(centers, gap, bottom=acc, width=width, edgecolor="tab:red", color="tab:red", alpha=0.3, label="gap")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"ECE = {ece:.4f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path
