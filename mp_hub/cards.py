"""Model cards, rendered from the templates in `mp_hub/model_cards/` on every save."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .config import MetaPerturbConfig
from .version import __version__

TEMPLATES = Path(__file__).parent / "model_cards"
# The library of every card whose model loads with mp_hub (φ, a model with φ attached): one name on the Hub.
LIBRARY_NAME = "mp_hub"
PHI_TAGS = ["metaperturb", "regularization", "image-classification", "mp_hub"]
PERTURBED_TAGS = ["metaperturb", "mp_hub", "image-classification"]
_NOT_ROWS = {"results", "license", "license_note", "datasets"}
# Hub ids of the datasets that mp_hub's bundled ones are subsets of (for a card's `datasets`).
BUNDLED_SOURCES = {"fashion_mnist_tiny": ["zalando-datasets/fashion_mnist"]}


def eval_results(results: list[dict[str, Any]], model_name: str) -> list[EvalResult]:
    """`results` rows {dataset_name, dataset_type, metric_type, metric_value, [metric_name, dataset_split]}."""
    return [
        EvalResult(
            task_type=row.get("task_type", "image-classification"),
            dataset_type=row["dataset_type"],
            dataset_name=row["dataset_name"],
            dataset_split=row.get("dataset_split"),
            metric_type=row["metric_type"],
            metric_name=row.get("metric_name"),
            metric_value=row["metric_value"],
        )
        for row in results
    ]


def results_markdown(results: list[dict[str, Any]]) -> str:
    if not results:
        return ""
    lines = ["| dataset | metric | value |", "|---|---|---|"]
    lines += [
        f"| {r['dataset_name']} | {r.get('metric_name') or r['metric_type']} | {r['metric_value']} |" for r in results
    ]
    return "\n".join(lines)


def table_cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace("|", "\\|").replace("\n", " ")


def render_phi_card(
    config: MetaPerturbConfig,
    num_parameters: int,
    *,
    repo_id: str = "path/to/this/folder",
    title: str | None = None,
    images: list[str] | None = None,
    reproduction: str | None = None,
    good_for: str | None = None,
    extra_markdown: str | None = None,
) -> str:
    """φ's card. `good_for`: markdown of what it is good for and where it was not better, with the figures of a
    benchmark record; without one the card says that nothing was measured."""
    prov = config.provenance
    results = prov.get("results", [])
    datasets = prov.get("datasets") or ([prov["source_dataset_id"]] if prov.get("source_dataset_id") else None)
    name = title or f"MetaPerturb φ ({prov.get('source_dataset', 'unknown source')})"
    card_data = ModelCardData(
        library_name=LIBRARY_NAME,
        tags=list(PHI_TAGS),
        license=prov.get("license", "apache-2.0"),
        datasets=datasets,
        model_name=name,
        eval_results=eval_results(results, name) or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "phi_card.md"),
        title=name,
        repo_id=repo_id,
        num_parameters=num_parameters,
        mp_hub_version=config.mp_hub_version or "",
        provenance_rows=[(k, table_cell(v)) for k, v in sorted(prov.items()) if k not in _NOT_ROWS]
        or [("source", "not recorded")],
        license_note=prov.get("license_note"),
        config=config,
        results_table=results_markdown(results),
        images=images or [],
        reproduction=reproduction,
        good_for=good_for,
        extra_markdown=extra_markdown,
    )
    return str(card)


def hub_model_id(name: str | None) -> str | None:
    """`name` when it names a Hub repo (not a local folder): only those belong in a card's `base_model`."""
    if not name or Path(name).exists() or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        return None
    return name


def transfer_usage(regularizer: str, repo_id: str) -> str:
    """The Python that loads a transfer run's model from `repo_id`."""
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


def render_transfer_card(
    *,
    model_name: str,
    model_class: str,
    base_model: str | None,
    dataset_id: str,
    hub_dataset: str | None,
    eval_split: str,
    num_train: int,
    num_eval: int,
    num_labels: int,
    regularizer: str,
    metrics: dict[str, float],
    steps: int,
    batch_size: int,
    learning_rate: float,
    lr_scheduler: str,
    image_size: int,
    repo_id: str,
    command: str,
    arguments: dict[str, Any],
    phi_id: str | None = None,
    num_sites: int | None = None,
    noise_anneal_fraction: float = 0.4,
    dropblock_prob: float = 0.1,
    dropblock_size: int = 7,
    inference_mode: str = "mc",
    eval_mc_samples: int = 100,
    reliability_png: str = "reliability_diagram.png",
    curve_png: str = "training_curve.png",
    robustness: str | None = None,
    robustness_png: str = "adversarial_accuracy.png",
) -> str:
    """The model card of a classifier trained with `regularizer` (`none`, `dropblock`, `metaperturb`).

    `model_name`: the model type or pretrained id it started from; `base_model`: the pretrained folder or Hub id
    (only a Hub id goes into the metadata); `dataset_id`: the dataset's Hub id or folder, `hub_dataset` its Hub id
    when it came from the Hub; `metrics`: accuracy, nll and ece on `eval_split`; `batch_size`: over all processes;
    `arguments`: the run's arguments (no secrets), shown as JSON; `command`: the command that reproduces the run.
    """
    dataset = Path(dataset_id).name
    title = f"{model_name} on {dataset} ({regularizer})"
    rows = [
        {
            "dataset_name": dataset,
            "dataset_type": hub_dataset or dataset,
            "dataset_split": eval_split,
            "metric_type": key,
            "metric_name": name,
            "metric_value": round(metrics[key], 6),
        }
        for key, name in (("accuracy", "Accuracy"), ("nll", "NLL"), ("ece", "ECE (15 bins)"))
    ]
    card_data = ModelCardData(
        # a baseline is a plain transformers model; with φ it is what render_perturbed_card describes
        library_name="transformers" if regularizer != "metaperturb" else LIBRARY_NAME,
        tags=["image-classification", "mp_hub", regularizer if regularizer != "none" else "baseline"]
        + (["metaperturb"] if regularizer == "metaperturb" else []),
        base_model=hub_model_id(base_model),
        base_model_relation="finetune" if hub_model_id(base_model) else None,
        datasets=[hub_dataset] if hub_dataset else BUNDLED_SOURCES.get(dataset),
        metrics=["accuracy"],
        pipeline_tag="image-classification",
        model_name=title,
        eval_results=eval_results(rows, title),
    )
    if regularizer == "metaperturb":
        desc = (
            f"MetaPerturb φ `{phi_id}` (frozen) at {num_sites} sites; κ 0 → 1 over the first "
            f"{noise_anneal_fraction:.0%} of steps"
        )
    elif regularizer == "dropblock":
        desc = (
            f"DropBlock at {num_sites} sites, block {dropblock_size} (clipped to the feature "
            f"size), rate 0 → {dropblock_prob} linearly over training"
        )
    else:
        desc = "none"
    mc = regularizer == "metaperturb" and inference_mode == "mc"
    eval_desc = (
        f"softmax averaged over {eval_mc_samples} stochastic passes (eval mode, running statistics)"
        if mc
        else "one deterministic pass" + (" (φ's expected noise)" if regularizer == "metaperturb" else "")
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "transfer_card.md"),
        title=title,
        regularizer=regularizer,
        regularizer_desc=desc,
        phi_id=phi_id,
        num_sites=num_sites,
        model_desc=f"`{model_class}` ({model_name})",
        base_model=hub_model_id(base_model),
        base_model_path=base_model,
        dataset=f"`{hub_dataset or dataset}`",
        num_train=num_train,
        num_eval=num_eval,
        num_labels=num_labels,
        eval_split=eval_split,
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler=lr_scheduler,
        image_size=image_size,
        eval_desc=eval_desc,
        accuracy=metrics["accuracy"],
        nll=metrics["nll"],
        ece=metrics["ece"],
        reliability_png=reliability_png,
        curve_png=curve_png,
        robustness=robustness,
        robustness_png=robustness_png,
        usage=transfer_usage(regularizer, repo_id),
        command=command,
        arguments=json.dumps(arguments, indent=1, default=str),
        mp_hub_version=__version__,
    )
    return str(card)


def calibration_cell(saved: dict[str, Any]) -> str:
    fit = saved.get("mc_fit")
    cell = f"{saved['num_images']} images"
    if fit:
        kl = f"KL {fit['kl_before']:.3f} → {fit['kl_after']:.3f}"
        cell += f", fitted to MC-{fit['mc_samples']} ({fit['steps']} steps, {kl})"
    return cell


def render_perturbed_card(config: dict[str, Any], *, repo_id: str, sites: list[Any], phi_parameters: int) -> str:
    """The card of a model saved with φ attached: `config` is its `metaperturb_config.json`, `sites` the
    handle's site records (name, placement, channels, spatial)."""
    base_model = hub_model_id(config["base_model_id"])
    model_class = config["model_class"]
    card_data = ModelCardData(
        library_name=LIBRARY_NAME,  # the φ and sites load with mp_hub.load_perturbed (transformers alone: the base)
        base_model=base_model,
        base_model_relation="finetune" if base_model else None,
        tags=list(PERTURBED_TAGS),
        pipeline_tag="image-classification" if model_class.endswith("ForImageClassification") else None,
    )
    rows = [
        ("base model", base_model or config["base_model_id"] or "not recorded"),
        ("φ source", config["phi_source_id"] or "not recorded"),
        ("resolver", config["resolver"]),
        ("targets", table_cell(config["targets"]) if config["targets"] is not None else "(resolver)"),
        ("C₀ (channel_norm)", f"{config['channel_norm']:g}"),
        ("H₀ (spatial_norm)", f"{config['spatial_norm']:g}"),
        ("κ (noise_coeff)", f"{config['noise_coeff']:g}"),
        ("inference mode", config["inference_mode"]),
        (
            "mean-mode calibration",
            calibration_cell(config["mean_mode_calibration"])
            if config["mean_mode_calibration"]
            else "none (run mp_hub.calibrate_mean_mode before using mean mode)",
        ),
        ("φ trainable", str(config["trainable_phi"]).lower()),
    ]
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "perturbed_model_card.md"),
        title=f"{model_class} + MetaPerturb φ",
        base_model=base_model,
        model_class=model_class,
        transformers_loadable=config["base_format"] == "transformers"
        and config["model_module"].startswith("transformers."),
        repo_id=repo_id,
        num_sites=len(sites),
        mp_hub_version=__version__,
        phi_parameters=phi_parameters,
        phi_id=config["phi_source_id"],
        rows=rows,
        sites=sites,
    )
    return str(card)
