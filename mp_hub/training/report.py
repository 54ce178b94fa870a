"""The curves a recipe leaves next to its result: meta-training loss/accuracy, a transfer run's training curve."""

from __future__ import annotations

import os
from pathlib import Path


def plot_curves(history: list[dict[str, float]], path: str | os.PathLike, title: str = "meta-training") -> Path:
    """PNG of the mean (over tasks) train/valid loss and accuracy per step; `history` rows have `step` and metrics."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.5))
    for split in ("train", "valid"):
        loss_axis.plot(steps, [row[f"{split}_loss"] for row in history], label=split)
        accuracy_axis.plot(steps, [row[f"{split}_accuracy"] for row in history], label=split)
    loss_axis.set(xlabel="step", ylabel="cross-entropy (mean over tasks)", title=f"{title}: loss")
    accuracy_axis.set(xlabel="step", ylabel="accuracy (mean over tasks)", title=f"{title}: accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_training_curve(history: list[dict], evals: list[dict], path: Path) -> Path:
    """Training loss (and κ or the DropBlock rate) per step; periodic evaluation accuracy and ECE."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    ax_loss, ax_eval = fig.subplots(1, 2)
    steps = [h["step"] for h in history]
    ax_loss.plot(steps, [h["loss"] for h in history], color="tab:blue", linewidth=1, label="train loss")
    ax_loss.set(xlabel="step", ylabel="loss", title="training")
    sched = next((k for k in ("noise_coeff", "drop_prob") if history and k in history[0]), None)
    if sched:
        twin = ax_loss.twinx()
        twin.plot(steps, [h[sched] for h in history], color="tab:gray", linestyle="--", label=sched)
        twin.set_ylabel({"noise_coeff": "κ", "drop_prob": "DropBlock rate"}[sched])
    if evals:
        e_steps = [e["step"] for e in evals]
        ax_eval.plot(e_steps, [e["accuracy"] for e in evals], "o-", color="tab:green", label="accuracy")
        ax_eval.plot(e_steps, [e["ece"] for e in evals], "s-", color="tab:red", label="ECE")
        ax_eval.legend(loc="center right")
    ax_eval.set(xlabel="step", ylim=(0, 1), title="evaluation")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path
