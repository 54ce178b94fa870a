"""Put a baseline regularizer (e.g. DropBlock) at the places `mp_hub.attach` would put φ.

`find_sites` is the resolver lookup without any `PerturbSite`; `attach_regularizer` hooks one module from
`module_factory(site_spec)` at every site, through the same adapters as φ (so a ViT's patch tokens are reshaped
to their (B, C, h, w) grid and back). The modules are registered on the model (`regularizer_sites`), so
`train()`/`eval()`, `.to()` and `set_drop_prob(model, p)` reach them; they must hold no parameters or
buffers if the model is to be saved as a plain model, which `RegularizerPlacement.remove()` gives back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from ..errors import AttachError
from ..model_edits import module_key
from ..resolvers import Resolution, SiteSpec, resolve
from ..site_hooks import hook_sites, split_output  # the one way of changing the model, as attach

logger = logging.getLogger(__name__)

REGULARIZER_ATTR = "regularizer_sites"

__all__ = ["REGULARIZER_ATTR", "RegularizerPlacement", "attach_regularizer", "find_sites"]


def find_sites(model: nn.Module, targets: str | Sequence[str] | None = None, placement: str = "output") -> Resolution:
    """The sites `mp_hub.attach(model, phi, targets=...)` would use (an `AttachError` when there are none)."""
    return resolve(model, targets, placement)[1]


class _RegularizerHook:
    def __init__(self, spec: SiteSpec, module: nn.Module):
        self.spec, self.module = spec, module

    def apply(self, fmap: Tensor) -> Tensor:
        if not isinstance(fmap, Tensor) or fmap.dim() != 4:
            shape = tuple(fmap.shape) if isinstance(fmap, Tensor) else type(fmap).__name__
            raise AttachError(f"regularizer site {self.spec.name!r} expects a (B, C, H, W) feature map, got {shape}")
        return self.module(fmap)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output=None):
        if self.spec.placement == "output":
            x, put_back = split_output(output, self.spec.name)
            return put_back(self.spec.adapter(x, self.apply, args, kwargs))
        if not args or not isinstance(args[0], Tensor):
            raise AttachError(f"regularizer site {self.spec.name!r} needs a tensor as the module's first input")
        return (self.spec.adapter(args[0], self.apply, args, kwargs), *args[1:]), kwargs


class RegularizerPlacement:
    """Handle on regularizer modules hooked at a model's sites: `modules` (site name → module), `remove()`."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module], hooks: list):
        self.model, self.modules, self._hooks = model, modules, hooks

    def remove(self) -> None:
        """Unhook and unregister the modules: the model is the plain model again."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if hasattr(self.model, REGULARIZER_ATTR):
            delattr(self.model, REGULARIZER_ATTR)

    def __len__(self) -> int:
        return len(self.modules)


def attach_regularizer(
    model: nn.Module,
    module_factory: Callable[[SiteSpec], nn.Module],
    *,
    targets: str | Sequence[str] | None = None,
    placement: str = "output",
) -> RegularizerPlacement:
    """Hook `module_factory(spec)` at each site of `model` (as `find_sites` resolves them) and return the handle.

    >>> from mp_hub.regularizers import DropBlock2d, set_drop_prob
    >>> placed = attach_regularizer(model, lambda spec: DropBlock2d(drop_prob=0.0, block_size=7))
    >>> set_drop_prob(model, 0.1)   # e.g. ramped by linear_drop_prob(step, total_steps, 0.1)
    """
    if hasattr(model, REGULARIZER_ATTR):
        raise AttachError(f"a regularizer is already placed on this {type(model).__name__}: remove() it first")
    resolution = find_sites(model, targets, placement)
    modules = {spec.name: module_factory(spec).train(model.training) for spec in resolution.sites}
    model.add_module(REGULARIZER_ATTR, nn.ModuleDict({module_key(n): m for n, m in modules.items()}))
    hooks = hook_sites(resolution, lambda spec: _RegularizerHook(spec, modules[spec.name]))
    logger.info(
        "placed %d %s modules at the sites of %s",
        len(modules),
        type(next(iter(modules.values()))).__name__,
        type(model).__name__,
    )
    return RegularizerPlacement(model, modules, hooks)
