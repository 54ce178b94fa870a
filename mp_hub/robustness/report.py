"""What a robustness evaluation leaves next to a run: accuracy against ε as a PNG, and a Markdown table."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError
from .evaluate import RobustnessReport
from .specs import NORMS

NORM_NAMES = {"linf": "L∞", "l2": "L2"}
AXIS_LABELS = {"linf": "ε (pixels in [0, 1], ×255)", "l2": "ε (pixels in [0, 1])"}
AXIS_SCALE = {"linf": 255.0, "l2": 1.0}  # L∞ radii read as grey levels


def curves(report: RobustnessReport) -> dict[str, tuple[list[float], list[float]]]:
    """Per norm, (ε, accuracy) by increasing ε, starting at (0, clean accuracy)."""
    out = {}
    for norm in NORMS:
        points = sorted((s.epsilon, a) for s, a in report.accuracy.items() if s.norm == norm)
        if points:
            out[norm] = ([0.0] + [e for e, _ in points], [report.clean_accuracy] + [a for _, a in points])
    return out


def check_reports(reports: Mapping[str, RobustnessReport]) -> None:
    if not reports or not all(isinstance(r, RobustnessReport) for r in reports.values()):
        raise ConfigError("reports must map a label (e.g. 'MC-100', 'mean mode') to a RobustnessReport")


def plot_accuracy_vs_epsilon(reports: Mapping[str, RobustnessReport], path: str | Path, title: str = "") -> Path:
    """A PNG of accuracy against ε, one panel per norm, one line per report (label → report); returns `path`."""
    check_reports(reports)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    norms = [n for n in NORMS if any(n in curves(r) for r in reports.values())]
    if not norms:
        raise ConfigError("the reports hold no attacked accuracy to plot (no attack specs)")
    fig = Figure(figsize=(4.5 * len(norms), 3.8))
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    axes = fig.subplots(1, len(norms), squeeze=False)[0]
    for axis, norm in zip(axes, norms):
        for label, report in reports.items():
            if norm in curves(report):
                epsilons, accuracy = curves(report)[norm]
                axis.plot([e * AXIS_SCALE[norm] for e in epsilons], accuracy, "o-", label=label)
        panel_title = f"{title} {NORM_NAMES[norm]} attack".strip()
        axis.set(xlabel=AXIS_LABELS[norm], ylabel="accuracy", ylim=(0, 1), title=panel_title)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def robustness_markdown(reports: Mapping[str, RobustnessReport]) -> str:
    """A Markdown table: one row per attack (clean first), one accuracy column per report (label → report)."""
    check_reports(reports)
    first = next(iter(reports.values()))
    labels = list(reports)
    lines = ["| attack | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    lines.append("| clean | " + " | ".join(f"{r.clean_accuracy:.4f}" for r in reports.values()) + " |")
    for spec in first.accuracy:
        cells = [f"{r.accuracy[spec]:.4f}" if spec in r.accuracy else "—" for r in reports.values()]
        lines.append(f"| {spec} | " + " | ".join(cells) + " |")
    settings = [f"{label}: {describe(r)}" for label, r in reports.items()]
    return "\n".join(lines) + "\n\n" + "; ".join(settings) + "."


def describe(report: RobustnessReport) -> str:
    """The protocol in words, for a card: images, steps, EoT draws, scoring passes."""
    draws = f"gradients averaged over {report.eot_samples} noise draws, " if report.stochastic else ""
    scored = f"scored by the MC average of {report.mc_samples} passes" if report.stochastic else "one pass"
    return f"{report.samples} images, EoT-PGD {report.steps} steps ({draws}step {report.relative_step:g}·ε), {scored}"
