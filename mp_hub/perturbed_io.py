"""Save and reload a model with φ attached, in one call: `save_perturbed` and `load_perturbed`.

The folder's layout is written by `perturbed_save` (what `handle.save_pretrained` calls); `load_perturbed`
rebuilds model + φ + sites from it and loads metaperturb.safetensors strictly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from .aligned_memory import realign_tensors
from .attach import AttachedPerturbation, attach, handle_of
from .errors import CheckpointError, ConfigError
from .hub import WEIGHTS_NAME, load_safetensors, load_state_dict_strict, resolve_file
from .mean_mode import MeanModeCalibration, calibration_targets
from .perturb import MetaPerturb
from .perturbed_config import read_perturbed_config
from .perturbed_save import PERTURB_CONFIG, PERTURB_WEIGHTS

logger = logging.getLogger(__name__)


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
    for record, site in zip(handle.sites, handle.site_list()):
        try:
            site.set_noise_coeff(float(site.noise_coeff))
        except ConfigError as err:
            raise CheckpointError(f"{weights}: sites.{record.key}.noise_coeff: {err}") from err


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
    handle.install_calibration(calibration)


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
        load_state_dict_strict(handle.state_module(), state, f"'{source}' ({PERTURB_WEIGHTS})")
        _check_noise_coeffs(handle, weights)
    except CheckpointError:
        handle.detach()
        raise
    handle.base_model_id = config.get("base_model_id") or handle.base_model_id
    model.eval()  # like from_pretrained, also for a model passed in
    return model, handle
