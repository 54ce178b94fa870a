"""transformers `resnet` and `regnet`: φ on the residual sum, before the block's ReLU (the paper's placement).

`ResNetBasicLayer` / `ResNetBottleNeckLayer` (and `RegNetXLayer` / `RegNetYLayer`) compute

    hidden_state = self.layer(x); hidden_state += self.shortcut(x); return self.activation(hidden_state)

so a forward PRE-hook on each block's own `activation` module (`<block>.activation`, not the `activation` of the
conv layers inside `<block>.layer`) sees exactly `layer(x) + shortcut(x)`; φ's output is what the ReLU gets.
The add is in place, so the hook never keeps a reference to its input. `ACT2FN` builds one activation module
per block, so each hook fires once per block.
"""

from __future__ import annotations

from torch import nn

from ._base import SiteSpec, modules_of_class, register_resolver

RESNET_BLOCKS = ("ResNetBasicLayer", "ResNetBottleNeckLayer")
REGNET_BLOCKS = ("RegNetXLayer", "RegNetYLayer")


def _pre_activation_sites(model: nn.Module, block_classes: tuple[str, ...]) -> list[SiteSpec]:
    return [
        SiteSpec(
            name=f"{name}.activation",
            module=block.activation,
            # the last conv layer of the residual branch fixes the block's width
            channels=block.layer[-1].normalization.num_features,
            placement="input",
        )
        for name, block in modules_of_class(model, block_classes)
    ]


def resolve_resnet(model: nn.Module) -> list[SiteSpec]:
    return _pre_activation_sites(model, RESNET_BLOCKS)


def resolve_regnet(model: nn.Module) -> list[SiteSpec]:
    return _pre_activation_sites(model, REGNET_BLOCKS)


register_resolver("resnet", resolve_resnet)
register_resolver("regnet", resolve_regnet)
