"""CIFAR-style source architectures of MetaPerturb as transformers models, registered with the Auto classes.

Importing this package registers the model types `cifar_resnet`, `cifar_vgg` and `cifar_conv4` with
`AutoConfig`, `AutoModel` and `AutoModelForImageClassification`, so `save_pretrained` / `from_pretrained` round
trips work through the Auto classes. `model_from_type` builds a fresh model from a short name or any transformers
model type. In every family the perturbation sites are the modules named `activation` inside the blocks (see each
module's docstring for the full names).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel

from ..errors import ConfigError
from .cifar_resnet import (
    RESNET_DEPTHS,
    CifarResNetBasicBlock,
    CifarResNetConfig,
    CifarResNetForImageClassification,
    CifarResNetModel,
    CifarResNetShortcut,
)
from .conv4 import CifarConv4Config, CifarConv4ForImageClassification, CifarConv4Model
from .vgg import CifarVggConfig, CifarVggForImageClassification, CifarVggModel

__all__ = [
    "RESNET_DEPTHS",
    "SHORT_NAMES",
    "CifarConv4Config",
    "CifarConv4ForImageClassification",
    "CifarConv4Model",
    "CifarResNetBasicBlock",
    "CifarResNetConfig",
    "CifarResNetForImageClassification",
    "CifarResNetModel",
    "CifarResNetShortcut",
    "CifarVggConfig",
    "CifarVggForImageClassification",
    "CifarVggModel",
    "check_config_overrides",
    "model_from_type",
]

_FAMILIES = (
    (CifarResNetConfig, CifarResNetModel, CifarResNetForImageClassification),
    (CifarVggConfig, CifarVggModel, CifarVggForImageClassification),
    (CifarConv4Config, CifarConv4Model, CifarConv4ForImageClassification),
)

# short name -> (config class, config defaults)
SHORT_NAMES: dict[str, tuple[type, dict[str, Any]]] = {
    **{f"cifar_resnet{d}": (CifarResNetConfig, {"depth": d}) for d in RESNET_DEPTHS},
    "cifar_vgg9": (CifarVggConfig, {}),
    "cifar_conv4": (CifarConv4Config, {}),
}


def _register() -> None:
    # exist_ok=True: re-importing (importlib.reload) re-registers the new class objects instead of failing.
    for config_cls, base_cls, head_cls in _FAMILIES:
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, base_cls, exist_ok=True)
        AutoModelForImageClassification.register(config_cls, head_cls, exist_ok=True)


_register()


def _default_config(key: str) -> PretrainedConfig:
    known = ", ".join(SHORT_NAMES)
    if key.lower() in SHORT_NAMES:
        config_cls, defaults = SHORT_NAMES[key.lower()]
        return config_cls(**defaults)
    try:
        return AutoConfig.for_model(key)
    except (ValueError, KeyError) as err:
        raise ConfigError(
            f"unknown model type {key!r}: use one of the short names {known}, or a transformers model type "
            f"with an image-classification head (e.g. 'vit', 'resnet')"
        ) from err


def check_config_overrides(name: str, overrides: dict[str, Any]) -> None:
    """Every key of `overrides` is a field of model type `name`'s config, else a `ConfigError` naming the unknown
    keys: a config stores any keyword as an attribute, so a misspelt key would be silently ignored."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model type must be a non-empty string, got {name!r}; short names: {', '.join(SHORT_NAMES)}")
    default = _default_config(name.strip())
    fields = set(default.to_dict()) | set(getattr(default, "attribute_map", {}))
    unknown = sorted(key for key in overrides if key not in fields)
    if unknown:
        raise ConfigError(
            f"config overrides {unknown} are not fields of the {default.model_type!r} config (misspelt?); "
            f"its fields: {sorted(fields)}"
        )


def model_from_type(
    name: str, num_labels: int, image_size: int = 32, num_channels: int = 3, **config_kwargs: Any
) -> PreTrainedModel:
    """A freshly initialised image classifier.

    `name` is a short name (`cifar_resnet20/32/44/56`, `cifar_vgg9`, `cifar_conv4`) or any model type known to
    `AutoConfig` (e.g. "vit", "resnet", "cifar_resnet"). `config_kwargs` go to the config (e.g. `hidden_size=32`
    for a tiny ViT). The config's `image_size` is always set so downstream code can read the input size.
    """
    known = ", ".join(SHORT_NAMES)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model type must be a non-empty string, got {name!r}; short names: {known}")
    key = name.strip()
    check_config_overrides(key, config_kwargs)
    common = {"num_labels": num_labels, "image_size": image_size, "num_channels": num_channels}
    if key.lower() in SHORT_NAMES:
        config_cls, defaults = SHORT_NAMES[key.lower()]
        config = config_cls(**{**defaults, **config_kwargs, **common})
        return AutoModelForImageClassification.from_config(config)
    try:
        config = AutoConfig.for_model(key, **config_kwargs, **common)
    except ConfigError:
        raise
    except (ValueError, KeyError) as err:
        raise ConfigError(
            f"unknown model type {name!r}: use one of the short names {known}, or a transformers model type "
            f"with an image-classification head (e.g. 'vit', 'resnet')"
        ) from err
    if getattr(config, "image_size", None) != image_size:
        config.image_size = image_size
    try:
        return AutoModelForImageClassification.from_config(config)
    except ValueError as err:
        raise ConfigError(
            f"model type {name!r} has no image-classification model in transformers; short names: {known}"
        ) from err
