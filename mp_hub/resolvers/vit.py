"""transformers `vit`, `deit`, `dinov2`, `dinov2_with_registers`: φ on each encoder layer's output tokens.

Each layer (`ViTLayer`, `DeiTLayer`, `Dinov2Layer`, `Dinov2WithRegistersLayer`) returns the (B, N, C) hidden
states after its MLP residual add (a tensor in transformers 5; a tuple or `ModelOutput` is handled too: its first
entry is perturbed). The leading tokens pass through unperturbed: CLS (ViT, DINOv2), CLS + distillation (DeiT),
CLS + `num_register_tokens` registers (DINOv2 with registers). The remaining h·w patch tokens are reshaped to a
(B, C=hidden_size, h, w) grid, perturbed and reshaped back. (h, w) is read off the patch-embedding conv of the
current batch, so interpolated position embeddings on non-square images work; tokens that do not form a grid
raise `AttachError`.
"""

from __future__ import annotations

from torch import nn

from ._base import GridProbe, Resolution, SiteSpec, TokenGrid, config_hw, modules_of_class, register_resolver

LAYERS = ("ViTLayer", "DeiTLayer", "Dinov2Layer", "Dinov2WithRegistersLayer")


def prefix_tokens(config) -> int:
    """Tokens before the patches: CLS, plus DeiT's distillation token, plus DINOv2's register tokens."""
    if config.model_type == "deit":
        return 2
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


def resolve_vit(model: nn.Module) -> Resolution:
    config = model.config
    probe = GridProbe()
    # the patch projection conv of the embeddings: records (h, w) of every batch for the adapters
    probes = [
        (emb.projection, probe)
        for _, emb in model.named_modules()
        if type(emb).__name__.endswith("PatchEmbeddings") and isinstance(getattr(emb, "projection", None), nn.Conv2d)
    ]
    image, patch = config_hw(getattr(config, "image_size", None)), config_hw(getattr(config, "patch_size", None))
    spatial = (image[0] // patch[0], image[1] // patch[1]) if image and patch else None
    adapter = TokenGrid(prefix_tokens(config), probe)
    sites = [
        SiteSpec(
            name=name, module=layer, channels=config.hidden_size, placement="output", adapter=adapter, spatial=spatial
        )
        for name, layer in modules_of_class(model, LAYERS)
    ]
    return Resolution(sites=sites, probes=probes)


for _model_type in ("vit", "deit", "dinov2", "dinov2_with_registers"):
    register_resolver(_model_type, resolve_vit)
