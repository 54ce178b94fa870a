"""CIFAR ResNet-20/32/44/56 as transformers models, built like the MetaPerturb authors' `ResNet_small`.

Architecture: 3×3 stem conv (`num_channels`→16, no bias) + BN + ReLU; three stages of BasicBlocks (16, 32, 64
channels, (depth−2)/6 blocks each, stride 2 at the first block of stages 2 and 3) with parameter-free option-A
shortcuts (stride subsampling + zero channel padding); global average pool; Linear(64, num_labels).
ResNet-20 with 10 labels has 269,722 parameters.

Module names in `CifarResNetForImageClassification` (in `CifarResNetModel` drop the `resnet.` prefix):

- `resnet.stem.conv`, `resnet.stem.bn`, `resnet.stem.relu` — the stem (its ReLU is *not* a perturbation site);
- `resnet.stages.{i}.blocks.{j}` — BasicBlock j of stage i (i in 0..2, j in 0..(depth−2)/6−1), with
  `conv1`, `bn1`, `inner_activation` (ReLU inside the residual branch), `conv2`, `bn2`, `shortcut`
  (`CifarResNetShortcut` or `nn.Identity`, no parameters) and `activation` — the block's output ReLU, applied
  only to `bn2(...) + shortcut(x)`. A forward pre-hook on `resnet.stages.{i}.blocks.{j}.activation` therefore
  sees exactly the pre-ReLU residual sum: the place where MetaPerturb inserts φ.
- `resnet.pooler` (AdaptiveAvgPool2d), `classifier` (Linear).

Authors' state-dict keys map as: `conv1`/`bn1` → `resnet.stem.conv`/`resnet.stem.bn`;
`layer{i+1}.{j}.*` → `resnet.stages.{i}.blocks.{j}.*`; `fc` → `classifier`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

from ..errors import ConfigError
from ._common import CifarImageClassifier, CifarPreTrainedModel, check_positive_int, classifier_layer, run_layers

RESNET_DEPTHS = (20, 32, 44, 56)


class CifarResNetConfig(PretrainedConfig):
    """Config of a CIFAR ResNet. `depth` must be 6n+2 (20, 32, 44, 56; 110 etc. also work).

    Args:
        depth: number of weight layers; (depth − 2) / 6 BasicBlocks per stage.
        hidden_sizes: channels of the three stages (default 16, 32, 64); each step must add an even number.
        image_size: side of the (square) input images; read by downstream code, the net itself is size-agnostic.
        num_channels: input channels.
    """

    model_type = "cifar_resnet"

    def __init__(
        self,
        depth: int = 20,
        hidden_sizes: list[int] | tuple[int, ...] = (16, 32, 64),
        image_size: int = 32,
        num_channels: int = 3,
        **kwargs,
    ):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ConfigError(
                f"cifar_resnet depth must be one of {', '.join(map(str, RESNET_DEPTHS))} "
                f"(or any 6n+2 >= 8), got {depth!r}"
            )
        hidden_sizes = [check_positive_int("hidden_sizes[]", h) for h in hidden_sizes]
        if len(hidden_sizes) != 3:
            raise ConfigError(f"cifar_resnet hidden_sizes must have 3 entries (one per stage), got {hidden_sizes}")
        for prev, cur in zip(hidden_sizes[:-1], hidden_sizes[1:]):
            if cur < prev or (cur - prev) % 2:
                raise ConfigError(
                    f"cifar_resnet hidden_sizes must be non-decreasing by even steps (option-A shortcuts pad "
                    f"channels equally on both sides), got {hidden_sizes}"
                )
        self.depth = depth
        self.hidden_sizes = hidden_sizes
        self.image_size = check_positive_int("image_size", image_size)
        self.num_channels = check_positive_int("num_channels", num_channels)
        super().__init__(**kwargs)

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class CifarResNetShortcut(nn.Module):
    """Option-A shortcut: `F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, pad, pad))`; no parameters."""

    def __init__(self, pad: int, stride: int = 2):
        super().__init__()
        self.pad = pad
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        return F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)

    def extra_repr(self) -> str:
        return f"pad={self.pad}, stride={self.stride}"


class CifarResNetBasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN, + shortcut, then the block's own ReLU (`activation`)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.inner_activation = nn.ReLU()
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = CifarResNetShortcut((out_channels - in_channels) // 2, stride)
        else:
            self.shortcut = nn.Identity()
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.inner_activation(self.bn1(self.conv1(x)))))
        out = out + self.shortcut(x)
        return self.activation(out)


class CifarResNetStage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, stride: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            CifarResNetBasicBlock(in_channels if j == 0 else out_channels, out_channels, stride if j == 0 else 1)
            for j in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class CifarResNetStem(nn.Module):
    def __init__(self, num_channels: int, out_channels: int):
        super().__init__()
        self.conv = _conv3x3(num_channels, out_channels)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(pixel_values)))


class CifarResNetPreTrainedModel(CifarPreTrainedModel):
    config_class = CifarResNetConfig
    base_model_prefix = "resnet"
    _no_split_modules = ["CifarResNetBasicBlock"]


class CifarResNetModel(CifarResNetPreTrainedModel):
    """Stem + stages + global average pool; `pooler_output` is (batch, hidden_sizes[-1])."""

    def __init__(self, config: CifarResNetConfig):
        super().__init__(config)
        sizes = config.hidden_sizes
        self.stem = CifarResNetStem(config.num_channels, sizes[0])
        self.stages = nn.ModuleList(
            CifarResNetStage(sizes[max(i - 1, 0)], sizes[i], config.blocks_per_stage, 1 if i == 0 else 2)
            for i in range(len(sizes))
        )
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        output_hidden_states, return_dict = self._resolve_flags(output_hidden_states, return_dict)
        hidden_state = self.stem(pixel_values)
        return run_layers(
            hidden_state,
            self.stages,
            output_hidden_states,
            return_dict,
            pooler=self.pooler,
            first_hidden_states=(hidden_state,),
        )


class CifarResNetForImageClassification(CifarResNetPreTrainedModel, CifarImageClassifier):
    """CIFAR ResNet + Linear classifier; returns `ImageClassifierOutputWithNoAttention`."""

    def __init__(self, config: CifarResNetConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.resnet = CifarResNetModel(config)
        self.classifier = classifier_layer(config.hidden_sizes[-1], config.num_labels)
        self.post_init()
