"""Where a site changes a model: `hook_sites` (shared by `attach` and `regularizers`) puts a hook at each resolved
module as a `model_edits` wrapper; the hook that applies a `PerturbSite`; the fused ReLU; and the rule for
finding the tensor in a module's output."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from .errors import AttachError
from .model_edits import EditHandle, wrap_forward
from .resolvers import Adapter, Resolution, SiteSpec
from .site import PerturbSite

Hook = Callable[..., object]  # (module, args, kwargs[, output]) -> replacement or None, as torch's with_kwargs hooks


def hook_sites(resolution: Resolution, hook_for: Callable[[SiteSpec], Hook]) -> list[EditHandle]:
    """Put `hook_for(spec)` at every resolved site, as a wrapper of the module's forward: on its output for
    placement "output" (torch's forward hooks on the module then see the changed output), on its first input
    for "input"; then the resolution's probes (spatial size recorders). Removing the returned handles gives the
    model back."""
    handles = [
        wrap_forward(spec.module, PlacedHook(spec.module, spec.placement, hook_for(spec))) for spec in resolution.sites
    ]
    handles += [wrap_forward(module, PlacedHook(module, "probe", probe)) for module, probe in resolution.probes]
    return handles


class PlacedHook:
    """A hook with torch's `with_kwargs` signature as a forward edit (an object, not a closure, so that
    `copy.deepcopy(model)` maps its module and hook to the copy's)."""

    def __init__(self, module: nn.Module, placement: str, hook: Hook):
        self.module, self.placement, self.hook = module, placement, hook

    def __call__(self, call_next: Callable[..., object], *args, **kwargs):
        if self.placement == "input":
            changed = self.hook(self.module, args, kwargs)
            if changed is not None:
                args, kwargs = changed
            return call_next(*args, **kwargs)
        output = call_next(*args, **kwargs)
        if self.placement == "probe":  # torch's plain forward-hook signature: records, changes nothing
            self.hook(self.module, args, output)
            return output
        changed = self.hook(self.module, args, kwargs, output)
        return output if changed is None else changed


@dataclass
class SiteRecord:
    name: str  # the hooked module's name in the model
    key: str  # the site's key in `model.metaperturb_sites`
    channels: int
    placement: str  # "input" (pre-hook on the module's first input) or "output" (hook on its output)
    spatial: tuple[int, int] | None = None  # (h, w) from the config, then of the latest batch


def split_output(output, where: str) -> tuple[Tensor, Callable[[Tensor], object]]:
    """The tensor to perturb in a module's output, and how to put the perturbed one back."""
    if isinstance(output, Tensor):
        return output, lambda y: y
    if isinstance(output, Mapping) and output:  # a transformers ModelOutput (an OrderedDict) or a dict
        key = next(iter(output))

        def put_mapping(y: Tensor):
            output[key] = y  # a fresh object from this call: nobody else holds it yet
            return output

        return output[key], put_mapping
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        if hasattr(output, "_fields"):  # namedtuple
            return output[0], lambda y: output._replace(**{output._fields[0]: y})
        return output[0], lambda y: type(output)((y, *output[1:]))
    raise AttachError(
        f"cannot perturb the output of {where}: expected a tensor, tuple or ModelOutput, got {type(output).__name__}"
    )


class SiteHook:
    """Forward (pre-)hook applying one site; does nothing while the handle is disabled."""

    def __init__(self, handle, record: SiteRecord, site: PerturbSite, adapter: Adapter):
        # handle: anything with a bool `enabled` (the AttachedPerturbation); it is an attribute, not a closure
        # variable, so copy.deepcopy(model) maps it (and the site) to the copy's own
        self.handle, self.record, self.site, self.adapter = handle, record, site, adapter
        self.fused_pending = False  # set when the site has rectified the input its ReLU module is about to get

    def perturb(self, fmap: Tensor) -> Tensor:
        if not isinstance(fmap, Tensor) or fmap.dim() != 4 or fmap.shape[1] != self.site.channels:
            shape = tuple(fmap.shape) if isinstance(fmap, Tensor) else type(fmap).__name__
            raise AttachError(
                f"site {self.record.name!r} expects a (B, {self.site.channels}, H, W) feature map, got {shape}; "
                "with targets=, name modules that carry (B, C, H, W) feature maps"
            )
        self.record.spatial = (int(fmap.shape[-2]), int(fmap.shape[-1]))
        return self.site(fmap)  # call the module, so hooks on the site see its input

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output=None):
        if not self.handle.enabled:
            return None
        if self.record.placement == "output":
            x, put_back = split_output(output, self.record.name)
            return put_back(self.adapter(x, self.perturb, args, kwargs))
        if not args or not isinstance(args[0], Tensor):
            raise AttachError(
                f"site {self.record.name!r} (placement='input') needs a tensor as first positional "
                f"input of the module; got {type(args[0]).__name__ if args else 'no positional input'}"
            )
        perturbed = self.adapter(args[0], self.perturb, args, kwargs)
        self.fused_pending = self.site.fused_relu
        return (perturbed, *args[1:]), kwargs


class FusedReLU:
    """The replacement forward of a ReLU module fed by a site with `fused_relu` (a `model_edits` replacement).

    A call right after the site ran passes its (already rectified) input through; any other call, e.g. while
    the handle is disabled, is the module's own ReLU.
    """

    def __init__(self, hook: SiteHook):
        self.hook = hook

    def __call__(self, own_forward: Callable[..., Tensor], x: Tensor, *args, **kwargs) -> Tensor:
        if self.hook.fused_pending:
            self.hook.fused_pending = False
            return x
        return own_forward(x, *args, **kwargs)
