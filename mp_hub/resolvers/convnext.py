"""transformers `convnext` / `convnextv2`: φ on each `ConvNextLayer`'s output.

The layer returns `residual + drop_path(features)` after permuting back to channels-first, so a forward hook on
each `ConvNextLayer` (`ConvNextV2Layer`) perturbs the (B, C, H, W) block output after the residual add; there is
no activation after the add in ConvNeXt.
"""

from __future__ import annotations

from torch import nn

from ._base import SiteSpec, modules_of_class, register_resolver


def resolve_convnext(model: nn.Module) -> list[SiteSpec]:
    return [
        SiteSpec(name=name, module=layer, channels=layer.dwconv.out_channels, placement="output")
        for name, layer in modules_of_class(model, ("ConvNextLayer", "ConvNextV2Layer"))
    ]


register_resolver("convnext", resolve_convnext)
register_resolver("convnextv2", resolve_convnext)
