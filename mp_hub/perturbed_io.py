"""One-call save and reload of a model with φ attached.

A saved folder holds the base model exactly as `model.save_pretrained` writes it (base weights only, so plain
transformers still loads it), plus
  metaperturb.safetensors   φ once (`phi.*`), every site's buffers (`sites.<key>.*`) and, once
                            `calibrate_mean_mode` has run, the mean-mode BatchNorm statistics and LayerNorm
                            weights (`calibration.*`),
  metaperturb_config.json   how to attach again: resolver, targets, placement, C₀, H₀, κ, inference mode, φ's
                            config and source id, the base model id and the site names,
  README.md                 a model card (`model_cards/perturbed_model_card.md`).
`load_perturbed` rebuilds model + φ + sites and loads metaperturb.safetensors strictly.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import save_file
from torch import nn

from .aligned_memory import realign_tensors
from .attach import (
    CALIBRATION_ATTR,
    PHI_ATTR,
    SITES_ATTR,
    AttachedPerturbation,
    attach,
    handle_of,
    sites_state_module,
)
from .calibration import MeanModeCalibration, calibration_targets
from .cards import TEMPLATES, _cell
from .errors import CheckpointError, ConfigError
from .hub import CARD_NAME, WEIGHTS_NAME, load_safetensors, load_state_dict_strict, resolve_file
from .perturb import MetaPerturb
from .perturbed_config import read_perturbed_config

logger = logging.getLogger(__name__)

PERTURB_WEIGHTS = "metaperturb.safetensors"
PERTURB_CONFIG = "metaperturb_config.json"
TAGS = ["metaperturb", "mp_hub", "image-classification"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _is_transformers_model(model: nn.Module) -> bool:
    return callable(getattr(model, "save_pretrained", None)) and hasattr(model, "config")


def base_state_dict(model: nn.Module) -> dict[str, Any]:
    """The model's state dict without φ and the sites: the keys of the untouched model."""
    skip = (f"{PHI_ATTR}.", f"{SITES_ATTR}.", f"{CALIBRATION_ATTR}.")
    return {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}


def perturbation_config(handle: AttachedPerturbation) -> dict[str, Any]:
    from . import __version__

    model, targets, calibration = handle.model, handle.targets, handle.calibration
    return {
        "format_version": 1 if calibration is None else (3 if calibration.layer_norm_names else 2),
        "mp_hub_version": __version__,
        "resolver": handle.resolver,
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "model_class": type(model).__name__,
        "model_module": type(model).__module__,
        "base_format": "transformers" if _is_transformers_model(model) else "safetensors",
        "targets": targets if targets is None or isinstance(targets, str) else list(targets),
        "placement": handle.placement,
        "spatial_norm": handle.spatial_norm,
        "channel_norm": handle.channel_norm,
        "inference_mode": handle.inference_mode,
        "noise_coeff": handle.noise_coeff,
        "trainable_phi": handle.trainable_phi,
        "phi_config": handle.phi.config.to_dict(),
        "phi_source_id": getattr(handle.phi, "source_id", None),
        "base_model_id": handle.base_model_id,
        "sites": [r.name for r in handle.sites],
        "mean_mode_calibration": None
        if calibration is None
        else {
            "norm_layers": list(calibration.names),
            "num_images": calibration.num_images,
            "mc_fit": calibration.mc_fit,
        },
    }


def _hub_id(value: str | None) -> str | None:
    """`value` if it looks like a Hub repo id (not a local path): only those go in the card's `base_model`."""
    if not value or not _REPO_ID.match(str(value)) or Path(str(value)).exists():
        return None
    return str(value)


def _calibration_cell(saved: dict[str, Any]) -> str:
    fit = saved.get("mc_fit")
    cell = f"{saved['num_images']} images"
    if fit:
        kl = f"KL {fit['kl_before']:.3f} → {fit['kl_after']:.3f}"
        cell += f", fitted to MC-{fit['mc_samples']} ({fit['steps']} steps, {kl})"
    return cell


def render_perturbed_card(handle: AttachedPerturbation, config: dict[str, Any], repo_id: str) -> str:
    from . import __version__

    base_model = _hub_id(config["base_model_id"])
    model_class = config["model_class"]
    card_data = ModelCardData(
        library_name="transformers" if config["base_format"] == "transformers" else "mp_hub",
        base_model=base_model,
        tags=list(TAGS),
        pipeline_tag="image-classification" if model_class.endswith("ForImageClassification") else None,
    )
    rows = [
        ("base model", base_model or config["base_model_id"] or "not recorded"),
        ("φ source", config["phi_source_id"] or "not recorded"),
        ("resolver", config["resolver"]),
        ("targets", _cell(config["targets"]) if config["targets"] is not None else "(resolver)"),
        ("C₀ (channel_norm)", f"{config['channel_norm']:g}"),
        ("H₀ (spatial_norm)", f"{config['spatial_norm']:g}"),
        ("κ (noise_coeff)", f"{config['noise_coeff']:g}"),
        ("inference mode", config["inference_mode"]),
        (
            "mean-mode calibration",
            _calibration_cell(config["mean_mode_calibration"])
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
        num_sites=len(handle.sites),
        mp_hub_version=__version__,
        phi_parameters=sum(p.numel() for p in handle.phi_parameters()),
        phi_id=config["phi_source_id"],
        rows=rows,
        sites=handle.sites,
    )
    return str(card)


def save_attached(
    handle: AttachedPerturbation, save_directory: str | os.PathLike, *, repo_id: str = "path/to/this/folder", **kwargs
) -> Path:
    """What `handle.save_pretrained` does; `kwargs` go to the model's own `save_pretrained`."""
    directory = Path(save_directory)
    model, base = handle.model, base_state_dict(handle.model)
    if not kwargs.get("is_main_process", True):  # like transformers: other ranks write nothing
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    if _is_transformers_model(model):
        model.save_pretrained(directory, state_dict=base, **kwargs)
    else:  # a plain nn.Module: its weights alone, reloaded into a model the caller builds (load_perturbed(model=))
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in base.items()}, str(directory / WEIGHTS_NAME))
    state = {k: v.detach().cpu().contiguous() for k, v in sites_state_module(handle).state_dict().items()}
    tmp = directory / f".{PERTURB_WEIGHTS}.tmp"  # temp name + rename: a killed save leaves no half-written file
    save_file(state, str(tmp), metadata={"format": "pt", "library": "mp_hub"})
    os.replace(tmp, directory / PERTURB_WEIGHTS)
    config = perturbation_config(handle)
    (directory / PERTURB_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (directory / CARD_NAME).write_text(render_perturbed_card(handle, config, repo_id))
    logger.info("saved %s with φ at %d sites to %s", config["model_class"], len(handle.sites), directory)
    return directory


def save_perturbed(model: nn.Module, save_directory: str | os.PathLike, **kwargs) -> Path:
    """`handle.save_pretrained` for the handle attached to `model` (also through a DDP / compile wrapper)."""
    return handle_of(model).save_pretrained(save_directory, **kwargs)


def _load_base_model(source: str, config: dict[str, Any], config_path: Path, hub_kwargs: dict[str, Any]) -> nn.Module:
    import transformers

    from . import models as mp_models  # registers the CIFAR model types with the Auto classes

    if config["base_format"] != "transformers":
        raise CheckpointError(
            f"'{source}' holds a plain {config['model_class']} (not a transformers model): build "
            "one and pass it, load_perturbed(source, model=my_model)"
        )
    namespace = mp_models if config["model_module"].startswith("mp_hub.") else transformers
    model_class = getattr(namespace, config["model_class"], None)
    if model_class is None and not config["model_module"].startswith(("mp_hub.", "transformers.")):
        model_class = transformers.AutoModelForImageClassification  # a custom class: its model_type picks one
    elif not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        raise CheckpointError(
            f"{config_path}: model_class {config['model_class']!r} is not a model class of {namespace.__name__} "
            "(the file was edited, or written by another version): restore it, or build the model and pass it, "
            "load_perturbed(source, model=my_model)"
        )
    try:
        return model_class.from_pretrained(source, **hub_kwargs)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"could not load the base model of '{source}' with {model_class.__name__}: {err}"
        ) from err


def _load_base_weights(model: nn.Module, source: str, hub_kwargs: dict[str, Any]) -> None:
    path = resolve_file(source, WEIGHTS_NAME, **hub_kwargs)
    try:
        model.load_state_dict(load_safetensors(path), strict=True)
    except RuntimeError as err:  # missing / unexpected keys or wrong shapes, named by torch
        raise CheckpointError(f"{path} does not fit the given {type(model).__name__}: {err}") from err


def _check_noise_coeffs(handle: AttachedPerturbation, weights: Path) -> None:
    """Each site's loaded κ must be one `set_noise_coeff` accepts (its own check, applied to the loaded value)."""
    for key, site in getattr(handle.model, SITES_ATTR).items():
        try:
            site.set_noise_coeff(float(site.noise_coeff))
        except ConfigError as err:
            raise CheckpointError(f"{weights}: sites.{key}.noise_coeff: {err}") from err


def _restore_calibration(handle: AttachedPerturbation, saved: dict[str, Any] | None, source: str) -> None:
    """Rebuild the (empty) mean-mode calibration the folder was saved with, so the strict load fills it."""
    if not saved:
        return
    norms = calibration_targets(handle.model, layer_norms=True)  # whatever the folder's calibration may hold
    missing = [n for n in saved.get("norm_layers", []) if n not in norms]
    if missing or not saved.get("norm_layers"):
        raise CheckpointError(
            f"'{source}' has a mean-mode calibration for norm layers the rebuilt model lacks: {missing}"
        )
    calibration = MeanModeCalibration({n: norms[n] for n in saved["norm_layers"]}, handle.site_list())
    calibration.mc_fit = saved.get("mc_fit")  # absent in folders written before the MC-matched fit existed
    handle._set_calibration(calibration)


def load_perturbed(
    pretrained: str | os.PathLike,
    *,
    model: nn.Module | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
) -> tuple[nn.Module, AttachedPerturbation]:
    """(model, handle) from a folder or Hub repo written by `handle.save_pretrained` / `push_to_hub`.

    The base model comes from its own files (its transformers class, else AutoModelForImageClassification);
    pass `model=` to load the weights into a model you built (required for a plain nn.Module). φ and the
    sites are then loaded strictly: missing or unexpected keys raise `CheckpointError`. The model is returned in
    eval mode, like `from_pretrained`.
    """
    hub_kwargs = dict(
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
        force_download=force_download,
    )
    source = str(pretrained)
    config_path = resolve_file(source, PERTURB_CONFIG, **hub_kwargs)
    config, phi_config = read_perturbed_config(config_path)
    weights = resolve_file(source, PERTURB_WEIGHTS, **hub_kwargs)
    if model is None:
        # transformers 5 leaves the weights in the mapped file, unaligned: some BLAS paths then round differently
        model = _load_base_model(source, config, config_path, hub_kwargs)
        realign_tensors(model)
    else:
        _load_base_weights(model, source, hub_kwargs)
    phi = MetaPerturb(phi_config)
    if config.get("phi_source_id"):
        phi.source_id = config["phi_source_id"]
    handle = attach(
        model,
        phi,
        targets=config["targets"],
        placement=config["placement"],
        spatial_norm=config["spatial_norm"],
        channel_norm=config["channel_norm"],
        inference_mode=config["inference_mode"],
        trainable_phi=config["trainable_phi"],
    )
    try:
        names = [r.name for r in handle.sites]
        if names != config["sites"]:
            raise CheckpointError(f"'{source}' was saved with sites {config['sites']}, the rebuilt model has {names}")
        _restore_calibration(handle, config.get("mean_mode_calibration"), source)
        state = load_safetensors(weights)
        load_state_dict_strict(sites_state_module(handle), state, f"'{source}' ({PERTURB_WEIGHTS})")
        _check_noise_coeffs(handle, weights)
    except CheckpointError:
        handle.detach()
        raise
    handle.base_model_id = config.get("base_model_id") or handle.base_model_id
    model.eval()  # like from_pretrained, also for a model passed in
    return model, handle
