"""What a resolver returns, the resolver registry, the one name-matching function, and the tensor adapters.

A resolver is a callable `resolver(model) -> list[SiteSpec] | Resolution`: it finds where φ goes in one
architecture family and how to reach a (B, C, H, W) feature map there. Each family module calls
`register_resolver(model_type, resolver)` at import; `attach` looks the resolver up by `model.config.model_type`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import AttachError

PLACEMENTS = ("output", "input")
RESERVED_PREFIX = "metaperturb_"  # attach's own submodules; never a site

# adapter(x, perturb, args, kwargs) -> x': x is the hooked tensor (the module's output, or its first positional
# input); perturb maps a (B, C, H, W) feature map to the perturbed one; args/kwargs are the module's call arguments.
Adapter = Callable[[Tensor, Callable[[Tensor], Tensor], tuple, dict], Tensor]


def feature_map(x: Tensor, perturb: Callable[[Tensor], Tensor], args: tuple, kwargs: dict) -> Tensor:
    """The hooked tensor already is (B, C, H, W): perturb it as is (CNNs)."""
    return perturb(x)


@dataclass
class SiteSpec:
    """One insertion point: hook `module` (named `name` in the model) at its `placement`."""

    name: str
    module: nn.Module
    channels: int
    placement: str = "output"
    adapter: Adapter = feature_map
    spatial: tuple[int, int] | None = None  # from the config where known; attach updates it on every forward


@dataclass
class Resolution:
    """Sites plus `probes`: (module, recorder) pairs, `recorder(module, args, output)` noting shapes only (e.g. a
    ViT's patch grid)."""

    sites: list[SiteSpec]
    probes: list[tuple[nn.Module, Callable]] = field(default_factory=list)


Resolver = Callable[[nn.Module], "list[SiteSpec] | Resolution"]
_RESOLVERS: dict[str, Resolver] = {}


def register_resolver(model_type: str, resolver: Resolver) -> Resolver:
    """Make `attach` use `resolver` for models whose `config.model_type` is `model_type` (replaces any previous)."""
    if not isinstance(model_type, str) or not model_type:
        raise AttachError(f"model_type must be a non-empty string, got {model_type!r}")
    if not callable(resolver):
        raise AttachError(f"resolver for {model_type!r} must be callable, got {type(resolver).__name__}")
    _RESOLVERS[model_type] = resolver
    return resolver


def get_resolver(model_type: str | None) -> Resolver | None:
    return _RESOLVERS.get(model_type) if model_type else None


def registered_model_types() -> list[str]:
    return sorted(_RESOLVERS)


def match_modules(model: nn.Module, targets: str | Sequence[str]) -> list[tuple[str, nn.Module]]:
    """Modules of `model` named by `targets`, in model order.

    A string is a regular expression that must match the whole module name (`re.fullmatch`); a list holds exact
    names or dotted suffixes (peft's rule: `name == key or name.endswith("." + key)`).
    """
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as err:
            raise AttachError(f"targets={targets!r} is not a valid regular expression: {err}") from err

        def hit(name: str) -> bool:
            return pattern.fullmatch(name) is not None

    else:
        keys = list(targets) if isinstance(targets, Iterable) else [targets]
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise AttachError(f"targets must be a regex string or a non-empty list of module names, got {targets!r}")

        def hit(name: str) -> bool:
            return any(name == key or name.endswith("." + key) for key in keys)

    return [(n, m) for n, m in model.named_modules() if n and not n.startswith(RESERVED_PREFIX) and hit(n)]


def modules_of_class(model: nn.Module, class_names: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """Modules whose class is named in `class_names` (by name: resolvers need not import every modeling file)."""
    wanted = set(class_names)
    return [(n, m) for n, m in model.named_modules() if type(m).__name__ in wanted]


def candidate_names(model: nn.Module, near: str | None = None, limit: int = 8) -> list[str]:
    """Module names to suggest in an error: the closest to `near`, else the items of ModuleLists/Sequentials."""
    names = [n for n, _ in model.named_modules() if n and not n.startswith(RESERVED_PREFIX)]
    if near:
        close = difflib.get_close_matches(near, names, n=limit, cutoff=0.3)
        if close:
            return close
    blocks = [
        f"{n}.{c}" if n else c
        for n, m in model.named_modules()
        if isinstance(m, nn.ModuleList | nn.Sequential)
        for c, _ in m.named_children()
    ]
    return (blocks or names)[:limit]


def channels_of(module: nn.Module, side: str = "output") -> int | None:
    """Channel count a conv / norm layer produces (`output`) or consumes (`input`); None for other modules."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels if side == "output" else module.in_channels
    if isinstance(module, nn.modules.batchnorm._NormBase):  # BatchNorm*, InstanceNorm*
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    return None


def infer_channels(model: nn.Module, name: str, module: nn.Module, placement: str) -> int | None:
    """Channels at a user-named module: its own conv/norm size, else that of the last (output) / first (input)
    conv or norm inside it, else, for a parameter-free module such as a ReLU, the last conv/norm before it in
    the model (registration order, which is execution order in nearly every model)."""
    own = channels_of(module, placement)
    if own is not None:
        return own
    inner = [c for m in module.modules() if (c := channels_of(m, placement)) is not None]
    if inner:
        return inner[-1] if placement == "output" else inner[0]
    if any(True for _ in module.parameters()):  # e.g. a Linear: not a feature-map layer
        return None
    before = None
    for other_name, other in model.named_modules():
        if other_name == name:
            return before
        if not any(True for _ in other.children()):
            before = channels_of(other, "output") or before
    return None


def config_hw(value) -> tuple[int, int] | None:
    """(H, W) from a config's `image_size` / `patch_size`: an int or a pair."""
    if value is None:
        return None
    if isinstance(value, Sequence):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def tokens_to_map(tokens: Tensor, height: int, width: int, perturb: Callable[[Tensor], Tensor]) -> Tensor:
    """(B, h·w, C) tokens → (B, C, h, w) → perturb → back to (B, h·w, C)."""
    batch, count, channels = tokens.shape
    grid = tokens.transpose(1, 2).reshape(batch, channels, height, width)
    return perturb(grid).flatten(2).transpose(1, 2)


class GridProbe:
    """Forward hook on a patch-embedding conv: remembers the patch grid (h, w) of the latest batch.

    With it a non-square input (interpolated position embeddings) still maps its tokens to the right grid.
    """

    def __init__(self):
        self.grid: tuple[int, int] | None = None

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if isinstance(output, Tensor) and output.dim() == 4:
            self.grid = (int(output.shape[-2]), int(output.shape[-1]))


class TokenGrid:
    """Adapter for ViT-style layers: `prefix` tokens (CLS, distillation, registers) pass through unperturbed;
    the patch tokens are reshaped to their (B, C, h, w) grid, perturbed and reshaped back."""

    def __init__(self, prefix: int, probe: GridProbe | None = None):
        self.prefix = prefix
        self.probe = probe

    def grid(self, patches: int) -> tuple[int, int]:
        if self.probe is not None and self.probe.grid is not None:
            h, w = self.probe.grid
            if h * w == patches:
                return h, w
        side = math.isqrt(patches)
        if side * side == patches:
            return side, side
        raise AttachError(
            f"{patches} patch tokens (after {self.prefix} CLS/distillation/register tokens) do not form a grid: "
            "cannot reshape them to (B, C, h, w) for φ"
        )

    def __call__(self, x: Tensor, perturb: Callable[[Tensor], Tensor], args: tuple, kwargs: dict) -> Tensor:
        if x.dim() != 3:
            raise AttachError(f"expected ViT tokens of shape (B, N, C), got {tuple(x.shape)}")
        h, w = self.grid(x.shape[1] - self.prefix)
        patches = tokens_to_map(x[:, self.prefix :], h, w, perturb)
        if self.prefix == 0:
            return patches
        prefix = x[:, : self.prefix]
        if patches.shape[0] != x.shape[0]:  # mc_predict's batched draws: the first site repeated the batch
            prefix = prefix.repeat(patches.shape[0] // x.shape[0], 1, 1)
        return torch.cat((prefix, patches), dim=1)
