"""What the transfer recipe writes besides the model: all_results.json, the two plots and the model card."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .. import __version__
from ..cards import TEMPLATES, eval_results
from ..checkpointing import atomic_write
from ..metrics import plot_reliability_diagram

RESULTS_NAME = "all_results.json"
# Hub ids of the datasets that mp_hub's bundled ones are subsets of (for the card's `datasets`).
_BUNDLED_SOURCES = {"fashion_mnist_tiny": ["zalando-datasets/fashion_mnist"]}
RELIABILITY_PNG = "reliability_diagram.png"
CURVE_PNG = "training_curve.png"


def launch_command(argv: list[str] | None = None) -> str:
    """The command line of this run, as `accelerate launch ...` when it was started by accelerate."""
    argv = list(sys.argv if argv is None else argv)
    for i, arg in enumerate(argv):  # never write a token into a card
        if arg == "--hub_token" and i + 1 < len(argv):
            argv[i + 1] = "<HUB_TOKEN>"
        elif arg.startswith("--hub_token="):
            argv[i] = "--hub_token=<HUB_TOKEN>"
    if "ACCELERATE_MIXED_PRECISION" in os.environ:  # set by `accelerate launch` for its children
        launcher = "accelerate launch"
    elif "TORCHELASTIC_RUN_ID" in os.environ:
        launcher = f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', '?')}"
    else:
        launcher = "python"
    return f"{launcher} {shlex.join(argv)}"


def public_args(args) -> dict[str, Any]:
    """The run's arguments without secrets (for the card, the results and checkpoints)."""
    return {k: v for k, v in sorted(vars(args).items()) if k != "hub_token"}


def write_results(output_dir: Path, results: dict[str, Any]) -> Path:
    path = output_dir / RESULTS_NAME  # whole or absent: a run killed while writing leaves no truncated file
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(results, indent=2, sort_keys=True)))
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


def write_plots(output_dir: Path, probs, labels, history, evals, n_bins: int = 15) -> None:
    plot_reliability_diagram(probs, labels, output_dir / RELIABILITY_PNG, n_bins=n_bins)
    plot_training_curve(history, evals, output_dir / CURVE_PNG)


def hub_model_id(name: str | None) -> str | None:
    """`name` when it names a Hub repo (not a local folder): only those belong in a card's `base_model`."""
    if not name or Path(name).exists() or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        return None
    return name


def _usage(regularizer: str, repo_id: str) -> str:
    if regularizer == "metaperturb":
        return (
            "import mp_hub\n\n"
            f'model, handle = mp_hub.load_perturbed("{repo_id}")  # the model with its sites and φ\n'
            'handle.set_inference_mode("mean")  # one deterministic pass; "mc": average several noisy passes'
        )
    return (
        "from transformers import AutoModelForImageClassification\n"
        "import mp_hub.models  # registers the cifar_* model types (not needed for transformers' own types)\n\n"
        f'model = AutoModelForImageClassification.from_pretrained("{repo_id}")'
    )


def render_card(
    args, *, data, built, reg, metrics: dict[str, float], steps: int, world_size: int, repo_id: str, command: str
) -> str:
    title = f"{args.model_name_or_path or args.model_type} on {Path(data.dataset_id).name} ({reg.kind})"
    dataset_type = args.dataset_name or Path(data.dataset_id).name
    rows = [
        {
            "dataset_name": Path(data.dataset_id).name,
            "dataset_type": dataset_type,
            "dataset_split": data.eval_split,
            "metric_type": key,
            "metric_name": name,
            "metric_value": round(metrics[key], 6),
        }
        for key, name in (("accuracy", "Accuracy"), ("nll", "NLL"), ("ece", "ECE (15 bins)"))
    ]
    card_data = ModelCardData(
        library_name="transformers" if reg.kind != "metaperturb" else "mp_hub",
        tags=["image-classification", "mp_hub", reg.kind if reg.kind != "none" else "baseline"]
        + (["metaperturb"] if reg.kind == "metaperturb" else []),
        base_model=hub_model_id(built.base_model),
        datasets=[args.dataset_name] if args.dataset_name else _BUNDLED_SOURCES.get(Path(data.dataset_id).name),
        metrics=["accuracy"],
        pipeline_tag="image-classification",
        model_name=title,
        eval_results=eval_results(rows, title),
    )
    if reg.kind == "metaperturb":
        desc = (
            f"MetaPerturb φ `{reg.phi_id}` (frozen) at {reg.info.get('sites')} sites; κ 0 → 1 over the first "
            f"{args.noise_anneal_fraction:.0%} of steps"
        )
    elif reg.kind == "dropblock":
        desc = (
            f"DropBlock at {reg.info.get('sites')} sites, block {args.dropblock_size} (clipped to the feature "
            f"size), rate 0 → {args.dropblock_prob} linearly over training"
        )
    else:
        desc = "none"
    mc = reg.kind == "metaperturb" and args.inference_mode == "mc"
    eval_desc = (
        f"softmax averaged over {args.eval_mc_samples} stochastic passes (eval mode, running statistics)"
        if mc
        else "one deterministic pass" + (" (φ's expected noise)" if reg.kind == "metaperturb" else "")
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "transfer_card.md"),
        title=title,
        regularizer=reg.kind,
        regularizer_desc=desc,
        phi_id=reg.phi_id,
        num_sites=reg.info.get("sites"),
        model_desc=f"`{type(built.model).__name__}` ({args.model_name_or_path or args.model_type})",
        base_model=hub_model_id(built.base_model),
        base_model_path=built.base_model,
        dataset=f"`{args.dataset_name or Path(data.dataset_id).name}`",
        num_train=len(data.train),
        num_eval=len(data.eval),
        num_labels=len(data.labels),
        eval_split=data.eval_split,
        steps=steps,
        batch_size=args.per_device_train_batch_size * world_size,
        learning_rate=args.learning_rate,
        lr_scheduler=args.lr_scheduler_type,
        image_size=built.image_size,
        eval_desc=eval_desc,
        accuracy=metrics["accuracy"],
        nll=metrics["nll"],
        ece=metrics["ece"],
        reliability_png=RELIABILITY_PNG,
        curve_png=CURVE_PNG,
        usage=_usage(reg.kind, repo_id),
        command=command,
        arguments=json.dumps(public_args(args), indent=1, default=str),
        mp_hub_version=__version__,
    )
    return str(card)
