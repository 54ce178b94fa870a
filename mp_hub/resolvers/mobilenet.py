"""transformers `mobilenet_v2`: φ on each `MobileNetV2InvertedResidual`'s output.

The block returns `x + reduce_1x1(...)` where it has a residual (stride 1, same width), else the linear
bottleneck `reduce_1x1(...)` (BN, no activation); the site perturbs that (B, C, H, W) tensor. The stem and
the final 1×1 conv are not sites.
"""

from __future__ import annotations

from torch import nn

from ._base import SiteSpec, modules_of_class, register_resolver


def resolve_mobilenet_v2(model: nn.Module) -> list[SiteSpec]:
    return [
        SiteSpec(name=name, module=block, channels=block.reduce_1x1.convolution.out_channels, placement="output")
        for name, block in modules_of_class(model, ("MobileNetV2InvertedResidual",))
    ]


register_resolver("mobilenet_v2", resolve_mobilenet_v2)
