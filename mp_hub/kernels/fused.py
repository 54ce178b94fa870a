"""`PerturbSite.forward` on the fused kernels, with a hand-derived backward: which calls they serve, and how a call
reaches them.

The kernel passes themselves (and `pass_timer`, `PASSES`, the noise modes) are in `passes.py`. A call reaches them
one of two ways, with the same arguments and the same results:
  eager           an `autograd.Function` calling the passes directly (no dispatcher: the cheapest per call);
  torch.compile   the `torch.library` custom ops `mp_hub::site_forward` / `mp_hub::site_backward` (`ops.py`),
                  which dynamo traces as single ops, so a compiled model keeps the kernels in one graph.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import build, get_default_backend, ops, passes
from .passes import MODE_EPS, MODE_MEAN, MODE_RNG, PASSES, SiteCall, pass_timer

logger = logging.getLogger(__name__)

_warned: set[str] = set()
KEY_HIGH = 2**62  # the generator key: one draw of torch.randint(0, KEY_HIGH), split into two 31-bit words


@torch.compiler.assume_constant_result
def _warn_once(reason: str) -> bool:
    """Log the fallback once per reason. Under torch.compile it runs while dynamo traces (its result taken as a
    constant), so a compiled model warns once too, with no logging call in its graph."""
    if reason not in _warned:
        _warned.add(reason)
        logger.warning("PerturbSite backend 'fused' falls back to the eager path: %s", reason)
    return True


@torch.compiler.assume_constant_result
def build_problem() -> str:
    """Why the kernels cannot run in this process ("" where they can): fixed once `build.load()` has run, so a
    compiled graph takes it as a constant instead of tracing the loader."""
    if build.load() is not None:
        return ""
    return f"the kernels could not be built ({build.load_error()})"


def phi_params(phi) -> tuple[Tensor, ...]:
    """λ₁, γ₁, λ₂, γ₂, the scale kernels and the scale's fc weight: what the kernels read (attribute access is
    much cheaper than walking `phi.parameters()` on every call)."""
    gen, scale = phi.noise_generator, phi.channel_scale
    return (*gen.layer1.kernels, *gen.layer2.kernels, scale.kernels, scale.fc.weight)


def _ineligible(site, x: Tensor, noise: Tensor | None, params: tuple[Tensor, ...]) -> str | None:
    """Why the fused kernels cannot serve this call (None: they can)."""
    if not x.is_cpu or x.dtype != torch.float32 or x.layout != torch.strided:
        return f"x is {x.dtype} on {x.device.type} (the kernels take float32 CPU tensors)"
    config = site.phi.config
    if config.kernel_size != 3 or not 1 <= config.h_dim <= 32:
        return f"φ has kernel_size {config.kernel_size}, h_dim {config.h_dim} (the kernels take 3×3, h_dim <= 32)"
    if any(p.dtype != torch.float32 or not p.is_cpu for p in params):
        return "φ's parameters are not float32 on CPU"
    if any(b.dtype != torch.float32 or not b.is_contiguous() for b in (site.running_mean, site.running_var)):
        return "the site's running statistics are not contiguous float32"
    if noise is not None and (noise.dtype != torch.float32 or not noise.is_cpu or noise.requires_grad):
        return "noise is not a float32 CPU tensor without grad"
    if x.numel() >= 2**31:
        return "x has 2^31 elements or more"
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return "called under TorchScript tracing or scripting"
    if torch.compiler.is_compiling():  # dynamo traces torch.func transforms itself; the custom ops serve the rest
        return None
    functorch = getattr(torch._C, "_functorch", None)
    if functorch is not None and functorch.is_functorch_wrapped_tensor(x):
        return "called under a torch.func transform"
    return None


def kernels_for(site, x: Tensor, noise: Tensor | None) -> tuple[Tensor, ...] | None:
    """φ's parameters if this call should take the fused path, else None."""
    backend = site.backend or get_default_backend()
    if backend == "eager":
        return None
    params = phi_params(site.phi)
    reason = _ineligible(site, x, noise, params) or build_problem()
    if not reason:
        return params
    if backend == "fused":
        _warn_once(reason)
    return None


class _FusedSite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, noise, lib, call, running, *params):
        y, saved = passes.forward(lib, call, x, params, noise, *running, keep_masks=ctx.needs_input_grad[0])
        ctx.save_for_backward(x, noise, *params, *saved)
        ctx.lib, ctx.call = lib, call
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, noise, *params, features, masks, scale, mean, var = ctx.saved_tensors
        wanted = ctx.needs_input_grad
        needs = (wanted[0], any(wanted[5:9]), wanted[9], wanted[10])
        gx, gng, g_k, g_fc = passes.backward(ctx.lib, ctx.call, grad_y, x, noise, tuple(params),
                                             (features, masks, scale, mean, var), needs)  # fmt: skip
        g_ng = [None] * 4 if gng is None else [g.view(1, 1, 3, 3) for g in gng.unbind(0)]
        return (
            gx if needs[0] else None, None, None, None, None, *g_ng,
            None if g_k is None else g_k.view_as(params[4]),
            None if g_fc is None else g_fc.view_as(params[5]),
        )  # fmt: skip


def site_forward(site, params: tuple[Tensor, ...], x: Tensor, noise: Tensor | None) -> Tensor:
    """y = site(x, noise) on the fused kernels; `params` is what `kernels_for` returned for this call. y comes in
    x's layout where the kernels read it as it is (NCHW or channels-last), else NCHW."""
    x = passes.dense(x)
    if site.inference_mode == "mean":  # like the eager path, "mean" ignores a given noise
        noise, mode = None, MODE_MEAN
    elif noise is not None:
        noise, mode = noise.contiguous(), MODE_EPS
    else:  # keys from torch's default generator: torch.manual_seed reproduces the draws
        mode = MODE_RNG
    batch_stats = site.training and x.shape[0] >= 2
    if torch.compiler.is_compiling():
        return site_forward_op(site, params, x, noise, mode, batch_stats)
    keys = passes.split_key(int(torch.randint(0, KEY_HIGH, ()))) if mode == MODE_RNG else (0, 0)
    call = SiteCall(mode, batch_stats, float(site.noise_coeff), site.clip_value, int(site.fused_relu), site.momentum,
                    site.channel_norm, site.spatial_norm, keys)  # fmt: skip
    lib, running = build.load(), (site.running_mean, site.running_var)
    params = tuple(p.contiguous() for p in params)
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _FusedSite.apply(x, noise, lib, call, running, *params)
    with torch.no_grad():
        return passes.forward(lib, call, x, params, noise, *running, keep_masks=False)[0]


def site_forward_op(
    site, params: tuple[Tensor, ...], x: Tensor, noise: Tensor | None, mode: int, batch_stats: bool
) -> Tensor:
    """site_forward under torch.compile: one `mp_hub::site_forward` op (κ and the key read inside it), then the
    running statistics it returns copied into the site's buffers."""
    key = torch.randint(0, KEY_HIGH, ()) if mode == MODE_RNG else None
    keep_masks = torch.is_grad_enabled() and x.requires_grad
    y, _, _, _, new_mean, new_var = ops.site_forward(
        x, noise, *params, site.running_mean, site.running_var, site.noise_coeff, key, mode, batch_stats,
        site.clip_value, site.fused_relu, site.momentum, site.channel_norm, site.spatial_norm, keep_masks,
    )  # fmt: skip
    if batch_stats:
        with torch.no_grad():
            site.running_mean.copy_(new_mean)
            site.running_var.copy_(new_var)
    return y


def normal_draws(shape: tuple[int, int, int, int], keys: tuple[int, int]) -> Tensor:
    """The ε the fused path draws for an x of `shape` with generator keys `keys` (for tests and debugging)."""
    lib = build.load()
    if lib is None:
        raise RuntimeError(f"fused kernels unavailable: {build.load_error()}")
    batch, channels, height, width = shape
    out = torch.empty(batch * channels, height * width)
    for plane in range(batch * channels):
        lib.mp_normal(out[plane].data_ptr(), height * width, plane, *keys)
    return out.view(shape)


__all__ = ["MODE_EPS", "MODE_MEAN", "MODE_RNG", "PASSES", "kernels_for", "pass_timer", "phi_params", "site_forward"]
