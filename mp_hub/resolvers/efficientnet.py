"""transformers `efficientnet`: φ on each `EfficientNetBlock`'s output.

The block ends in `EfficientNetFinalBlockLayer`: project_conv → project_bn, then (stride 1 and not the first
block of a stage) dropout + the residual input. The site on the block perturbs that (B, C, H, W) output,
after the residual add where there is one; EfficientNet has no activation after it. The stem and the top 1×1
conv are not sites.
"""

from __future__ import annotations

from torch import nn

from ._base import SiteSpec, modules_of_class, register_resolver


def resolve_efficientnet(model: nn.Module) -> list[SiteSpec]:
    return [
        SiteSpec(name=name, module=block, channels=block.projection.project_conv.out_channels, placement="output")
        for name, block in modules_of_class(model, ("EfficientNetBlock",))
    ]


register_resolver("efficientnet", resolve_efficientnet)
