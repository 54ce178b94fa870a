"""Where φ goes in each architecture family: one module per family, each registering itself.

`register_resolver(model_type, resolver)` plugs in a new family; `resolve(model, targets, placement)` is what
`mp_hub.attach` calls. With `targets`, any `nn.Module` works through `match_modules` (one rule for all names).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import AttachError

# each family module registers its resolvers on import
from . import cifar, convnext, efficientnet, mobilenet, resnet, swin, vit  # noqa: F401
from ._base import (
    PLACEMENTS,
    Adapter,
    GridProbe,
    Resolution,
    SiteSpec,
    TokenGrid,
    candidate_names,
    feature_map,
    get_resolver,
    infer_channels,
    match_modules,
    register_resolver,
    registered_model_types,
)

__all__ = [
    "PLACEMENTS",
    "Adapter",
    "GridProbe",
    "Resolution",
    "SiteSpec",
    "TokenGrid",
    "feature_map",
    "get_resolver",
    "match_modules",
    "register_resolver",
    "registered_model_types",
    "resolve",
    "resolve_targets",
]

_EXAMPLE = r'attach(model, phi, targets=r"encoder\.layer\.\d+")'


def resolve_targets(model: nn.Module, targets: str | Sequence[str], placement: str = "output") -> Resolution:
    """Sites at the modules named by `targets` (see `match_modules`), hooked at their output or first input."""
    if placement not in PLACEMENTS:
        raise AttachError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    matched = match_modules(model, targets)
    if not matched:
        near = targets if isinstance(targets, str) else next(iter(targets), None)
        raise AttachError(
            f"targets={targets!r} matched no module of {type(model).__name__} (a string is a regex that must match "
            f"the whole name; a list holds exact names or dotted suffixes); some module names: "
            f"{', '.join(candidate_names(model, near))}"
        )
    sites = []
    for name, module in matched:
        channels = infer_channels(model, name, module, placement)
        if channels is None:
            raise AttachError(
                f"cannot tell how many channels module {name!r} ({type(module).__name__}) has at its {placement}: "
                "target conv / norm layers or blocks that contain them"
            )
        sites.append(SiteSpec(name=name, module=module, channels=channels, placement=placement))
    return Resolution(sites=sites)


def resolve(model: nn.Module, targets: str | Sequence[str] | None = None, placement: str = "output"):
    """(resolver name, Resolution) for `model`: the `targets` rule if given, else the registered family resolver."""
    if targets is not None:
        return "targets", resolve_targets(model, targets, placement)
    if placement != "output":
        raise AttachError("placement= applies to targets= only; registered architectures fix their own placement")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    resolver = get_resolver(model_type)
    if resolver is None:
        raise AttachError(
            f"no resolver for {type(model).__name__} (model_type={model_type!r}); supported model types: "
            f"{', '.join(registered_model_types())}. Name the modules to perturb with targets=, e.g. {_EXAMPLE} "
            f"(a regex over module names) or targets=['layer1', 'layer2'] (names or dotted suffixes); "
            f"candidates: {', '.join(candidate_names(model))}"
        )
    resolution = resolver(model)
    if not isinstance(resolution, Resolution):
        resolution = Resolution(sites=list(resolution))
    if not resolution.sites:
        raise AttachError(
            f"the {model_type!r} resolver found no block to perturb in {type(model).__name__}; pass targets=, "
            f"e.g. {_EXAMPLE}; candidates: {', '.join(candidate_names(model))}"
        )
    return model_type, resolution
