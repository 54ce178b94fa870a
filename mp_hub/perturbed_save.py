"""Write a model with φ attached: what `AttachedPerturbation.save_pretrained` does.

A saved folder holds the base model exactly as `model.save_pretrained` writes it (base weights only, so plain
transformers still loads it), plus
  metaperturb.safetensors   φ once (`phi.*`), every site's buffers (`sites.<key>.*`) and, once
                            `calibrate_mean_mode` has run, the mean-mode BatchNorm statistics and LayerNorm
                            weights (`calibration.*`),
  metaperturb_config.json   how to attach again: resolver, targets, placement, C₀, H₀, κ, inference mode, φ's
                            config and source id, the base model id and the site names,
  README.md                 a model card (`model_cards/perturbed_model_card.md`).
`perturbed_io.load_perturbed` reads it back.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import save_file
from torch import nn

from .cards import render_perturbed_card
from .hub import CARD_NAME, WEIGHTS_NAME
from .version import __version__

if TYPE_CHECKING:  # the handle calls this module: a type-only import, never executed
    from .attach import AttachedPerturbation

logger = logging.getLogger(__name__)

PERTURB_WEIGHTS = "metaperturb.safetensors"
PERTURB_CONFIG = "metaperturb_config.json"


def _is_transformers_model(model: nn.Module) -> bool:
    return callable(getattr(model, "save_pretrained", None)) and hasattr(model, "config")


def perturbation_config(handle: AttachedPerturbation) -> dict[str, Any]:
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


def save_attached(
    handle: AttachedPerturbation, save_directory: str | os.PathLike, *, repo_id: str = "path/to/this/folder", **kwargs
) -> Path:
    """What `handle.save_pretrained` does; `kwargs` go to the model's own `save_pretrained`."""
    directory = Path(save_directory)
    model, base = handle.model, handle.base_state_dict()
    if not kwargs.get("is_main_process", True):  # like transformers: other ranks write nothing
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    if _is_transformers_model(model):
        model.save_pretrained(directory, state_dict=base, **kwargs)
    else:  # a plain nn.Module: its weights alone, reloaded into a model the caller builds (load_perturbed(model=))
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in base.items()}, str(directory / WEIGHTS_NAME))
    state = {k: v.detach().cpu().contiguous() for k, v in handle.state_module().state_dict().items()}
    tmp = directory / f".{PERTURB_WEIGHTS}.tmp"  # temp name + rename: a killed save leaves no half-written file
    save_file(state, str(tmp), metadata={"format": "pt", "library": "mp_hub"})
    os.replace(tmp, directory / PERTURB_WEIGHTS)
    config = perturbation_config(handle)
    (directory / PERTURB_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (directory / CARD_NAME).write_text(
        render_perturbed_card(
            config, repo_id=repo_id, sites=handle.sites, phi_parameters=sum(p.numel() for p in handle.phi_parameters())
        )
    )
    logger.info("saved %s with φ at %d sites to %s", config["model_class"], len(handle.sites), directory)
    return directory
