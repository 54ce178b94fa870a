"""mp_hub's own CIFAR models (`cifar_resnet`, `cifar_vgg`, `cifar_conv4`, in `mp_hub.models`).

Every block has an `activation` ReLU applied only to its pre-activation: `bn2(...) + shortcut(x)` in
`CifarResNetBasicBlock`, `bn(conv(x))` in `CifarConvBlock` (VGG-9, Conv4). A forward PRE-hook on each block's
`activation` perturbs that tensor, i.e. after the residual add / after BN and before the ReLU (and before the
max-pool), as in the MetaPerturb authors' code. The ResNet stem's ReLU (`stem.relu`) is not a site.
"""

from __future__ import annotations

from torch import nn

from ._base import SiteSpec, modules_of_class, register_resolver


def resolve_cifar_resnet(model: nn.Module) -> list[SiteSpec]:
    return [
        SiteSpec(name=f"{name}.activation", module=block.activation, channels=block.bn2.num_features, placement="input")
        for name, block in modules_of_class(model, ("CifarResNetBasicBlock",))
    ]


def resolve_cifar_conv_blocks(model: nn.Module) -> list[SiteSpec]:
    return [
        SiteSpec(name=f"{name}.activation", module=block.activation, channels=block.bn.num_features, placement="input")
        for name, block in modules_of_class(model, ("CifarConvBlock",))
    ]


register_resolver("cifar_resnet", resolve_cifar_resnet)
register_resolver("cifar_vgg", resolve_cifar_conv_blocks)
register_resolver("cifar_conv4", resolve_cifar_conv_blocks)
