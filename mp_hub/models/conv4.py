"""Conv4 as a transformers model: 4 × (conv3x3 → BN → ReLU → 2×2 max-pool) + Linear, like the authors' `ConvNet4`.

Every conv layer has `hidden_size` channels (default 64; the authors' `conv4_<C>` model names set it) and a bias;
the last feature map (2×2 at 32×32 input) is flattened into the Linear classifier.

Module names in `CifarConv4ForImageClassification` (in `CifarConv4Model` drop the `conv4.` prefix):

- `conv4.blocks.{i}` (i in 0..3) — a `CifarConvBlock` with `conv`, `bn`, `activation` (ReLU applied only to the
  BN output: a forward pre-hook on `conv4.blocks.{i}.activation` sees the pre-ReLU activation, where MetaPerturb
  inserts φ) and `pool` (MaxPool2d);
- `classifier` (Linear on the flattened last feature map).

Authors' state-dict keys map as `conv_layers.{i}.*` → `conv4.blocks.{i}.*`, `fc` → `classifier`.
"""

from __future__ import annotations

from torch import nn
from transformers import PretrainedConfig

from ._common import (
    CifarConvBlock,
    CifarConvStackModel,
    CifarImageClassifier,
    CifarPreTrainedModel,
    check_positive_int,
    classifier_layer,
    pooled_size,
)


class CifarConv4Config(PretrainedConfig):
    """Config of Conv4. `image_size` fixes the classifier's input (flattened feature map)."""

    model_type = "cifar_conv4"

    def __init__(
        self,
        hidden_size: int = 64,
        num_blocks: int = 4,
        conv_bias: bool = True,
        image_size: int = 32,
        num_channels: int = 3,
        **kwargs,
    ):
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_blocks = check_positive_int("num_blocks", num_blocks)
        self.conv_bias = bool(conv_bias)
        self.image_size = check_positive_int("image_size", image_size)
        self.num_channels = check_positive_int("num_channels", num_channels)
        pooled_size(self.image_size, self.num_blocks, "cifar_conv4")  # validates image_size
        super().__init__(**kwargs)

    @property
    def feature_size(self) -> int:
        """Side of the last feature map at `image_size` input."""
        return pooled_size(self.image_size, self.num_blocks, "cifar_conv4")


class CifarConv4PreTrainedModel(CifarPreTrainedModel):
    config_class = CifarConv4Config
    base_model_prefix = "conv4"
    _no_split_modules = ["CifarConvBlock"]


class CifarConv4Model(CifarConv4PreTrainedModel, CifarConvStackModel):
    """The conv blocks; `pooler_output` is the flattened last feature map."""

    def __init__(self, config: CifarConv4Config):
        super().__init__(config)
        self.blocks = nn.ModuleList(
            CifarConvBlock(
                config.num_channels if i == 0 else config.hidden_size,
                config.hidden_size,
                bias=config.conv_bias,
                pool=True,
            )
            for i in range(config.num_blocks)
        )
        self.post_init()


class CifarConv4ForImageClassification(CifarConv4PreTrainedModel, CifarImageClassifier):
    """Conv4 + Linear classifier on the flattened features; returns `ImageClassifierOutputWithNoAttention`."""

    def __init__(self, config: CifarConv4Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.conv4 = CifarConv4Model(config)
        in_features = config.hidden_size * config.feature_size**2
        self.classifier = classifier_layer(in_features, config.num_labels)
        self.post_init()
