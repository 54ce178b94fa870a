"""transformers `swin`: φ on each `SwinLayer`'s output tokens.

A `SwinLayer` is called as `layer(hidden_states, input_dimensions, ...)` and returns `(hidden_states,
attn_weights)`, hidden_states being (B, h·w, C) after its MLP residual add, with (h, w) = `input_dimensions`
(the stage's resolution, before patch merging). All tokens are patches: they are reshaped to (B, C, h, w),
perturbed, and reshaped back; the attention weights pass through.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..errors import AttachError
from ._base import SiteSpec, modules_of_class, register_resolver, tokens_to_map


def swin_tokens(x: Tensor, perturb: Callable[[Tensor], Tensor], args: tuple, kwargs: dict) -> Tensor:
    dims = args[1] if len(args) > 1 else kwargs.get("input_dimensions")
    if dims is None or x.dim() != 3 or int(dims[0]) * int(dims[1]) != x.shape[1]:
        raise AttachError(f"Swin layer output {tuple(x.shape)} is not a (B, h·w, C) grid for input_dimensions={dims!r}")
    return tokens_to_map(x, int(dims[0]), int(dims[1]), perturb)


def resolve_swin(model: nn.Module) -> list[SiteSpec]:
    return [
        SiteSpec(
            name=name,
            module=layer,
            channels=int(layer.layernorm_before.normalized_shape[0]),
            placement="output",
            adapter=swin_tokens,
            spatial=tuple(int(s) for s in layer.input_resolution),
        )
        for name, layer in modules_of_class(model, ("SwinLayer",))
    ]


register_resolver("swin", resolve_swin)
