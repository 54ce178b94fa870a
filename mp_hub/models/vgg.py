"""CIFAR VGG-9 (8 conv layers + 1 linear) as a transformers model, built like the MetaPerturb authors' `VGG9`.

Default layout (the authors' `models/vgg.py`): conv channels 64, 128, 256, 256, 512, 512, 512, 512, each
conv3x3 (with bias) → BN → ReLU, a 2×2 max-pool after conv layers 0, 1, 3, 5 and 7, then the feature map is
flattened into a Linear classifier (at 32×32 input: 1×1×512 → num_labels). Both knobs are in the config:
`hidden_sizes` (8 entries, e.g. 64, 64, 128, 128, 256, 256, 512, 512) and `pool_after` (indices of the conv
layers followed by a max-pool, e.g. 1, 3, 5, 7 for "pool after pairs").

Module names in `CifarVggForImageClassification` (in `CifarVggModel` drop the `vgg.` prefix):

- `vgg.blocks.{i}` (i in 0..7) — a `CifarConvBlock` with `conv`, `bn`, `activation` (ReLU applied only to the BN
  output: a forward pre-hook on `vgg.blocks.{i}.activation` sees the pre-ReLU activation, where MetaPerturb
  inserts φ) and `pool` (MaxPool2d or Identity);
- `classifier` (Linear on the flattened last feature map).

Authors' state-dict keys map as `conv_layers.{i}.*` → `vgg.blocks.{i}.*`, `fc` → `classifier`.
"""

from __future__ import annotations

from torch import nn
from transformers import PretrainedConfig

from ..errors import ConfigError
from ._common import (
    CifarConvBlock,
    CifarConvStackModel,
    CifarImageClassifier,
    CifarPreTrainedModel,
    check_positive_int,
    classifier_layer,
    pooled_size,
)

VGG9_HIDDEN_SIZES = (64, 128, 256, 256, 512, 512, 512, 512)
VGG9_POOL_AFTER = (0, 1, 3, 5, 7)


class CifarVggConfig(PretrainedConfig):
    """Config of a CIFAR VGG: `hidden_sizes[i]` channels for conv layer i, max-pool after the layers in `pool_after`.

    `image_size` fixes the classifier's input (flattened feature map), so the model expects that input size.
    """

    model_type = "cifar_vgg"

    def __init__(
        self,
        hidden_sizes: list[int] | tuple[int, ...] = VGG9_HIDDEN_SIZES,
        pool_after: list[int] | tuple[int, ...] = VGG9_POOL_AFTER,
        conv_bias: bool = True,
        image_size: int = 32,
        num_channels: int = 3,
        **kwargs,
    ):
        hidden_sizes = [check_positive_int("hidden_sizes[]", h) for h in hidden_sizes]
        if not hidden_sizes:
            raise ConfigError("cifar_vgg hidden_sizes must list at least one conv layer")
        pool_after = sorted({int(i) for i in pool_after})
        if any(i < 0 or i >= len(hidden_sizes) for i in pool_after):
            raise ConfigError(f"cifar_vgg pool_after={pool_after} must index the {len(hidden_sizes)} conv layers")
        self.hidden_sizes = hidden_sizes
        self.pool_after = pool_after
        self.conv_bias = bool(conv_bias)
        self.image_size = check_positive_int("image_size", image_size)
        self.num_channels = check_positive_int("num_channels", num_channels)
        pooled_size(self.image_size, len(pool_after), "cifar_vgg")  # validates image_size
        super().__init__(**kwargs)

    @property
    def feature_size(self) -> int:
        """Side of the last feature map at `image_size` input."""
        return pooled_size(self.image_size, len(self.pool_after), "cifar_vgg")


class CifarVggPreTrainedModel(CifarPreTrainedModel):
    config_class = CifarVggConfig
    base_model_prefix = "vgg"
    _no_split_modules = ["CifarConvBlock"]


class CifarVggModel(CifarVggPreTrainedModel, CifarConvStackModel):
    """The conv blocks; `pooler_output` is the flattened last feature map."""

    def __init__(self, config: CifarVggConfig):
        super().__init__(config)
        pools = set(config.pool_after)
        in_sizes = [config.num_channels] + config.hidden_sizes[:-1]
        self.blocks = nn.ModuleList(
            CifarConvBlock(c_in, c_out, bias=config.conv_bias, pool=i in pools)
            for i, (c_in, c_out) in enumerate(zip(in_sizes, config.hidden_sizes))
        )
        self.post_init()


class CifarVggForImageClassification(CifarVggPreTrainedModel, CifarImageClassifier):
    """CIFAR VGG + Linear classifier on the flattened features; returns `ImageClassifierOutputWithNoAttention`."""

    def __init__(self, config: CifarVggConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vgg = CifarVggModel(config)
        in_features = config.hidden_sizes[-1] * config.feature_size**2
        self.classifier = classifier_layer(in_features, config.num_labels)
        self.post_init()
