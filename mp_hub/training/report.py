"""What a recipe leaves next to its result: the loss/accuracy curves and the command that reproduces it."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
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


def launch_command(script: str, argv: Sequence[str], num_processes: int) -> str:
    """The shell command of this run: `python script ...` or `accelerate launch --num_processes N script ...`."""
    args = shlex.join([script, *argv])
    if num_processes > 1:
        return f"accelerate launch --num_processes {num_processes} {args}"
    return f"python {args}"
