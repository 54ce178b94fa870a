"""`metaperturb_config.json`: what a saved model-with-φ folder records, and the check of every field on load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import MetaPerturbConfig, describe, is_finite_number, is_int, read_json_file
from .errors import CheckpointError, ConfigError
from .resolvers import PLACEMENTS
from .site import INFERENCE_MODES

FORMAT_VERSION = 3  # 2 added the mean-mode calibration, 3 its LayerNorm entries; each folder is written with the
# lowest version that holds it (1 without a calibration), so older mp_hub versions read what they can
BASE_FORMATS = ("transformers", "safetensors")


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _is_calibration(value: Any) -> bool:
    return value is None or (
        isinstance(value, dict)
        and _is_str_list(value.get("norm_layers"))
        and is_int(value.get("num_images"))
        and (value.get("mc_fit") is None or isinstance(value.get("mc_fit"), dict))
    )


# field → (required, valid, what it must be)
FIELDS: dict[str, tuple[bool, Callable[[Any], bool], str]] = {
    "format_version": (True, lambda v: is_int(v) and v >= 1, "a positive int"),
    "model_class": (True, lambda v: isinstance(v, str) and v.isidentifier(), "a class name"),
    "model_module": (True, lambda v: isinstance(v, str) and bool(v), "a module name"),
    "base_format": (True, lambda v: v in BASE_FORMATS, f"one of {BASE_FORMATS}"),
    "sites": (True, _is_str_list, "a list of site names"),
    "phi_config": (True, lambda v: isinstance(v, dict), "a JSON object"),
    "placement": (True, lambda v: v in PLACEMENTS, f"one of {PLACEMENTS}"),
    "spatial_norm": (True, lambda v: is_finite_number(v) and v > 0, "a finite number > 0 (H0)"),
    "channel_norm": (True, lambda v: is_finite_number(v) and v > 0, "a finite number > 0 (C0)"),
    "inference_mode": (True, lambda v: v in INFERENCE_MODES, f"one of {INFERENCE_MODES}"),
    "trainable_phi": (True, lambda v: isinstance(v, bool), "true or false"),
    "targets": (True, lambda v: v is None or isinstance(v, str) or _is_str_list(v), "null, a regex or a list of names"),
    "noise_coeff": (False, is_finite_number, "a finite number"),  # its range is checked on the sites' κ buffers
    "mp_hub_version": (False, _optional_str, "a string or null"),
    "resolver": (False, _optional_str, "a string or null"),
    "model_type": (False, _optional_str, "a string or null"),
    "phi_source_id": (False, _optional_str, "a string or null"),
    "base_model_id": (False, _optional_str, "a string or null"),
    "mean_mode_calibration": (False, _is_calibration, "null or {norm_layers: [names], num_images: int, mc_fit}"),
}


def read_perturbed_config(path: Path) -> tuple[dict[str, Any], MetaPerturbConfig]:
    """The checked contents of `path` and φ's config from it; any problem is a `CheckpointError` naming the field."""
    config = read_json_file(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {describe(config)}")
    missing = sorted(name for name, (required, _, _) in FIELDS.items() if required and name not in config)
    if missing:
        raise CheckpointError(f"{path} lacks the keys {missing}: it was not written by mp_hub's save_pretrained")
    problems = [
        f"{name} must be {expected}, got {describe(config[name])}"
        for name, (_, valid, expected) in FIELDS.items()
        if name in config and not valid(config[name])
    ]
    if problems:
        raise CheckpointError(f"{path} has invalid fields: " + "; ".join(problems))
    if config["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {config['format_version']}; this mp_hub reads up to {FORMAT_VERSION}: "
            "upgrade mp_hub"
        )
    try:
        phi_config = MetaPerturbConfig.from_dict(config["phi_config"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: phi_config: {err}") from err
    return config, phi_config
