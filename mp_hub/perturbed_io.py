"""Reload a model with φ attached: `load_perturbed` (model + φ + sites), `attach_pretrained` (φ + sites onto a
model you already have, as peft's `PeftModel.from_pretrained(base_model, repo)`), and `save_perturbed`.

The folder's layout is written by `perturbed_save` (what `handle.save_pretrained` calls); both loaders read
metaperturb_config.json, attach φ again and load metaperturb.safetensors strictly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .aligned_memory import realign_tensors
from .attach import AttachedPerturbation, attach, find_handle, handle_of
from .base_model_args import check_device_map, resolve_dtype
from .config import MetaPerturbConfig
from .errors import AttachError, CheckpointError, ConfigError
from .hub import WEIGHTS_NAME, load_safetensors, load_state_dict_strict, resolve_file
from .mean_mode import MeanModeCalibration, calibration_targets, norm_key
from .model_edits import module_key
from .perturb import MetaPerturb
from .perturbed_config import read_perturbed_config
from .perturbed_save import PERTURB_CONFIG, PERTURB_WEIGHTS

logger = logging.getLogger(__name__)


def save_perturbed(model: nn.Module, save_directory: str | os.PathLike, **kwargs) -> Path:
    """`handle.save_pretrained` for the handle attached to `model` (also through a DDP / compile wrapper)."""
    return handle_of(model).save_pretrained(save_directory, **kwargs)


@dataclass(frozen=True)
class SavedPerturbation:
    """A saved folder's perturbation, checked: its metaperturb_config.json and where its weights are."""

    source: str
    config: dict[str, Any]
    phi_config: MetaPerturbConfig
    weights: Path


def _read_saved(source: str, hub_kwargs: dict[str, Any]) -> SavedPerturbation:
    config, phi_config = read_perturbed_config(resolve_file(source, PERTURB_CONFIG, **hub_kwargs))
    return SavedPerturbation(source, config, phi_config, resolve_file(source, PERTURB_WEIGHTS, **hub_kwargs))


def _loader_kwargs(hub_kwargs: dict[str, Any], dtype: Any, device_map: Any) -> dict[str, Any]:
    """What `from_pretrained` of the base gets: the Hub arguments, and dtype / device_map where given (checked
    up front by `load_perturbed`, a dtype's name as its torch.dtype)."""
    kwargs = {k: v for k, v in hub_kwargs.items() if k != "subfolder" or v}  # transformers' default is ""
    return kwargs | {k: v for k, v in (("dtype", dtype), ("device_map", device_map)) if v is not None}


def _load_base_model(saved: SavedPerturbation, loader_kwargs: dict[str, Any]) -> nn.Module:
    import transformers

    from . import models as mp_models  # registers the CIFAR model types with the Auto classes

    config, source = saved.config, saved.source
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
            f"{source}/{PERTURB_CONFIG}: model_class {config['model_class']!r} is not a model class of "
            f"{namespace.__name__} (the file was edited, or written by another version): restore it, or build the "
            "model and pass it, load_perturbed(source, model=my_model)"
        )
    try:
        return model_class.from_pretrained(source, **loader_kwargs)
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


def _check_one_device(model: nn.Module) -> None:
    """φ is one module shared by every site: a model spread over several devices by a device_map cannot hold it."""
    devices = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()})
    if len(devices) > 1:
        raise ConfigError(
            f"device_map placed the model on {devices}; φ and its sites need the whole model on one device: "
            "pass device_map='cpu', 'cuda:0' (or another single device)"
        )


def _check_noise_coeffs(handle: AttachedPerturbation, weights: Path) -> None:
    """Each site's loaded κ must be one `set_noise_coeff` accepts (its own check, applied to the loaded value)."""
    for record, site in zip(handle.sites, handle.site_list()):
        try:
            site.set_noise_coeff(float(site.noise_coeff))
        except ConfigError as err:
            raise CheckpointError(f"{weights}: sites.{record.key}.noise_coeff: {err}") from err


def _strip_prefix(prefix: str, source: str, name: str) -> str:
    if not name.startswith(prefix):
        raise CheckpointError(
            f"'{source}' holds state for {name!r}, outside {prefix!r}: the given model has no such module"
        )
    return name[len(prefix) :]


def _site_renamer(saved: list[str], given: list[str], source: str, model_desc: str) -> Callable[[str], str]:
    """Saved module name → the given model's. The same names, or the same blocks one module deeper or shallower
    (a head model and its base model: transformers' `base_model_prefix`, e.g. `resnet.`); else an error."""
    if saved == given:
        return lambda name: name
    if saved and len(saved) == len(given):
        for longer, shorter, adds in ((saved, given, False), (given, saved, True)):
            prefix = longer[0][: len(longer[0]) - len(shorter[0])]
            if prefix.endswith(".") and all(a == prefix + b for a, b in zip(longer, shorter)):
                return partial(str.__add__, prefix) if adds else partial(_strip_prefix, prefix, source)
    missing, extra = [n for n in saved if n not in given], [n for n in given if n not in saved]
    raise CheckpointError(
        f"'{source}' was saved with {len(saved)} sites that {model_desc} does not match: "
        + (f"missing modules {missing}, sites it has instead {extra}" if missing or extra else "in another order")
        + f" (saved: {saved})"
    )


def _renamed_state(state: dict[str, torch.Tensor], key_maps: dict[str, dict[str, str]]) -> dict[str, torch.Tensor]:
    """`state` with each `<group>.<module key>.<rest>` key's module key mapped (unmapped keys stay, to be named)."""
    renamed = {}
    for key, value in state.items():
        for group, mapping in key_maps.items():
            if key.startswith(group):
                module, _, rest = key[len(group) :].partition(".")
                key = f"{group}{mapping.get(module, module)}.{rest}"
                break
        renamed[key] = value
    return renamed


def _check_site_channels(
    handle: AttachedPerturbation, state: dict[str, torch.Tensor], source: str, model_desc: str
) -> None:
    wrong = [
        f"{r.name}: {state[key].shape[0]} saved, {r.channels} in {model_desc}"
        for r in handle.sites
        if (key := f"sites.{r.key}.running_mean") in state and state[key].shape[0] != r.channels
    ]
    if wrong:
        raise CheckpointError(f"the sites saved in '{source}' have other channel counts: " + "; ".join(wrong))


def _restore_calibration(
    handle: AttachedPerturbation, saved: dict[str, Any] | None, source: str, rename: Callable[[str], str]
) -> None:
    """Rebuild the (empty) mean-mode calibration the folder was saved with, so the strict load fills it."""
    if not saved:
        return
    norms = calibration_targets(handle.model, layer_norms=True)  # whatever the folder's calibration may hold
    names = [rename(n) for n in saved.get("norm_layers", [])]
    missing = [n for n in names if n not in norms]
    if missing or not names:
        raise CheckpointError(f"'{source}' has a mean-mode calibration for norm layers the model lacks: {missing}")
    calibration = MeanModeCalibration({n: norms[n] for n in names}, handle.site_list())
    calibration.mc_fit = saved.get("mc_fit")  # absent in folders written before the MC-matched fit existed
    handle.install_calibration(calibration)


def _attach_saved(model: nn.Module, saved: SavedPerturbation, *, given: bool) -> AttachedPerturbation:
    """Attach the saved φ + sites to `model` and load their state (and the calibration) strictly."""
    config, source = saved.config, saved.source
    model_desc = f"the {'given' if given else 'rebuilt'} {type(model).__name__}"
    phi = MetaPerturb(saved.phi_config)
    if config.get("phi_source_id"):
        phi.source_id = config["phi_source_id"]
    try:
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
    except AttachError as err:
        if find_handle(model) is not None:  # φ already attached: attach's own error says so
            raise
        raise CheckpointError(
            f"the {len(config['sites'])} sites saved in '{source}' (resolver {config.get('resolver')!r}, targets "
            f"{config['targets']!r}) cannot be placed on {model_desc}: {err}"
        ) from err
    try:
        saved_sites = config["sites"]
        rename = _site_renamer(saved_sites, [r.name for r in handle.sites], source, model_desc)
        state = load_safetensors(saved.weights)
        calibration = config.get("mean_mode_calibration")
        if saved_sites != [r.name for r in handle.sites]:
            key_maps = {"sites.": {module_key(n): module_key(rename(n)) for n in saved_sites}}
            norms = (calibration or {}).get("norm_layers", [])
            key_maps["calibration.stats."] = {norm_key(n): norm_key(rename(n)) for n in norms}
            state = _renamed_state(state, key_maps)
        _check_site_channels(handle, state, source, model_desc)
        _restore_calibration(handle, calibration, source, rename)
        load_state_dict_strict(handle.state_module(), state, f"'{source}' ({PERTURB_WEIGHTS})")
        _check_noise_coeffs(handle, saved.weights)
    except CheckpointError:
        handle.detach()
        raise
    return handle


def load_perturbed(
    pretrained: str | os.PathLike,
    *,
    model: nn.Module | None = None,
    revision: str | None = None,
    subfolder: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
    dtype: torch.dtype | str | None = None,
    torch_dtype: torch.dtype | str | None = None,
    device_map: str | dict | torch.device | None = None,
) -> tuple[nn.Module, AttachedPerturbation]:
    """(model, handle) from a folder or Hub repo written by `handle.save_pretrained` / `push_to_hub`.

    The base model comes from its own files (its transformers class, else AutoModelForImageClassification), with
    `dtype` (or its alias `torch_dtype`) and `device_map` passed to its `from_pretrained` (one device: φ is
    shared by every site), checked before anything is read: one `from_pretrained` does not take is a
    `ConfigError` naming it; `revision`, `subfolder`, `cache_dir`, `local_files_only`, `token` and `force_download`
    apply to every file read. `model=`: load the saved base weights into a model you built (required for a plain
    nn.Module). To put the saved φ + sites on a model whose own weights you keep, use `attach_pretrained`. φ and the
    sites are loaded strictly: missing or unexpected keys raise `CheckpointError`. The model is returned in eval
    mode, like `from_pretrained`.
    """
    hub_kwargs = dict(
        revision=revision,
        subfolder=subfolder,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
        force_download=force_download,
    )
    dtype = resolve_dtype(dtype, torch_dtype)
    check_device_map(device_map)
    source = str(pretrained)
    if model is not None and (dtype is not None or device_map is not None):
        raise ConfigError(
            "dtype / torch_dtype / device_map apply when load_perturbed loads the base model itself; with "
            "model= given, cast and place that model yourself (before or after loading)"
        )
    saved = _read_saved(source, hub_kwargs)
    if model is None:
        model = _load_base_model(saved, _loader_kwargs(hub_kwargs, dtype, device_map))
        # transformers 5 leaves the weights in the mapped file, unaligned: some BLAS paths then round differently
        realign_tensors(model)
    else:
        _load_base_weights(model, source, hub_kwargs)
    _check_one_device(model)
    handle = _attach_saved(model, saved, given=False)
    handle.base_model_id = saved.config.get("base_model_id") or handle.base_model_id
    model.eval()  # like from_pretrained, also for a model passed in
    return model, handle


def attach_pretrained(
    model: nn.Module,
    pretrained: str | os.PathLike,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
) -> AttachedPerturbation:
    """Attach the φ and sites saved in `pretrained` (a folder or Hub repo written by `handle.save_pretrained`) to
    `model`, in place, with their state: the sites' running statistics and κ, the mean-mode calibration. The
    saved base weights are not read: `model` keeps its own (loaded in any dtype, quantized, of another class).

    Its sites must be the saved ones (by module name, also one module deeper or shallower: a head model and its
    base model) with the same channel counts, else `CheckpointError` names the mismatch. φ and the sites follow
    the model's device and floating dtype; the model's train / eval mode is left as it is.
    """
    hub_kwargs = dict(
        revision=revision,
        subfolder=subfolder,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
        force_download=force_download,
    )
    if not isinstance(model, nn.Module):
        raise AttachError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_one_device(model)
    handle = _attach_saved(model, _read_saved(str(pretrained), hub_kwargs), given=True)
    stale = handle.calibration.stale_norms() if handle.calibration is not None else []
    if stale:
        logger.warning(
            "the mean-mode calibration of '%s' was measured with other weights in %d of its %d norm layers than "
            "this model's: mean mode uses those layers' own statistics until calibrate_mean_mode runs again",
            pretrained,
            len(stale),
            len(handle.calibration.names),
        )
    return handle
