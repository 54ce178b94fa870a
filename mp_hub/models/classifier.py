"""An image classifier for a list of labels: a fresh model of a type, or a pretrained one with its image processor's
input size and normalisation; checked to take its images before any training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, NotCachedError
from . import model_from_type


@dataclass
class Classifier:
    """A model, the image size it takes, the normalisation it expects, and where it came from."""

    model: nn.Module
    image_size: int
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    base_model: str | None = None  # the pretrained model's folder or Hub id
    processor: Any | None = None  # its image processor, saved next to the trained model


def size_of(value: Any) -> int | None:
    """The side of a square image from a config's `image_size` or an image processor's `size`, if it names one."""
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and value:
        return int(value[0])
    for key in ("height", "shortest_edge"):  # an image processor's `size`: a dict, or a SizeDict (attributes)
        found = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        if isinstance(found, int):
            return found
    return None


def check_image_size(model: nn.Module, image_size: int) -> None:
    """One eval forward of a blank image: a size the model cannot take (below a ViT's patch, unlike the size its
    position embeddings were built for, ...) is a `ConfigError` now, not a crash at the first step."""
    channels = getattr(getattr(model, "config", None), "num_channels", 3)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, image_size, image_size))
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"image size {image_size} does not fit {type(model).__name__}: {err}") from err
    finally:
        model.train(was_training)


def build_classifier(
    labels: list[str],
    *,
    model_type: str | None = None,
    model_name_or_path: str | None = None,
    config_overrides: dict[str, Any] | None = None,
    image_size: int | None = None,
    ignore_mismatched_sizes: bool = False,
    token: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
) -> Classifier:
    """A fresh `model_type` (with `config_overrides`; default size 32) or a pretrained `model_name_or_path` (its
    size: `image_size`, else its config's, else its image processor's, else 224), with `labels` as its classes."""
    if (model_type is None) == (model_name_or_path is None):
        raise ConfigError("pass model_type (a fresh model) or model_name_or_path (a pretrained one), exactly one")
    id2label = {i: name for i, name in enumerate(labels)}
    label2id = {name: i for i, name in id2label.items()}
    if model_type is not None:
        size = image_size or 32
        model = model_from_type(model_type, len(labels), size, **dict(config_overrides or {}))
        model.config.id2label, model.config.label2id = id2label, label2id
        return Classifier(model, size)
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    hub = dict(token=token, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    try:
        model = AutoModelForImageClassification.from_pretrained(
            model_name_or_path,
            num_labels=len(labels),
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
            **hub,
        )
    except OSError as err:
        raise NotCachedError(
            f"model '{model_name_or_path}' could not be loaded (not a folder, not in the local Hugging Face cache, "
            f"or the Hub is unreachable): {err}"
        ) from err
    except (ValueError, RuntimeError) as err:
        if "size mismatch" in str(err) or "ignore_mismatched_sizes" in str(err):
            raise ConfigError(f"{err}\nSet ignore_mismatched_sizes to replace the pretrained head") from err
        raise
    try:
        processor = AutoImageProcessor.from_pretrained(model_name_or_path, **hub)
    except (OSError, ValueError):
        processor = None
    size = image_size or size_of(getattr(model.config, "image_size", None))
    size = size or size_of(getattr(processor, "size", None)) or 224
    mean = tuple(getattr(processor, "image_mean", None) or (0.5, 0.5, 0.5))
    std = tuple(getattr(processor, "image_std", None) or (0.5, 0.5, 0.5))
    return Classifier(model, size, mean, std, base_model=model_name_or_path, processor=processor)
