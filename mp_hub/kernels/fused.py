"""`PerturbSite.forward` on the fused kernels, with a hand-derived backward.

Passes over the (B, C, H, W) tensors per training step of one site:
  forward   1. scale features, their ReLU masks, the non-finite check (reads x)
            2. μ, noise, multiplier, clamp (reads x, writes y)
  backward  3. recompute μ and the noise; dL/dx through the multiplier and the noise generator; dL/ds, dL/dφ
            4. dL/dx through the batch statistics of the scale features, from the saved masks (adds into gx)
(2 and 3 on the stacked layout of `csrc/stacked.c`.) Saved for backward: x, the masks as bits (an eighth of x's
size) and the caller's noise if it passed one; μ, the other ReLU masks and the generated noise are recomputed,
which keeps a perturbed step's memory close to the bare model's. (Keeping μ + ε and the CEO1 masks instead of
x, for frozen φ, saved no time once pass 3 ran on the stacked layout, and was removed.)
The tiny per-channel math (moments, running statistics, s = sigmoid(w · [...]) and its
backward) is in C too: dozens of small torch ops less per site and step.
Under torch.profiler every kernel call is a named range, `mp_hub::<pass>` with the pass one of `PASSES`;
`pass_timer()` adds up their wall-clock time instead (`benchmarks/overhead.py --breakdown`): the profiler's
ranges also hold some of the profiler's own cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..errors import InvalidInputError
from . import build, get_default_backend

logger = logging.getLogger(__name__)

MODE_EPS, MODE_RNG, MODE_MEAN = 0, 1, 2
# the kernel calls, in step order: 1 scale features, the scale, 2 the site's forward; backward: 3, the scale's, 4
PASSES = ("features", "scale", "forward", "backward", "scale_backward", "features_backward")
_warned: set[str] = set()
_profiling = getattr(torch._C._autograd, "_profiler_enabled", lambda: False)


_pass_seconds: dict[str, float] | None = None  # while a pass_timer() is open


@contextmanager
def pass_timer() -> Iterator[dict[str, float]]:
    """Wall-clock seconds in each kernel pass (`PASSES`) while the block runs, added up into the dict it yields
    (time.perf_counter around each kernel call, nothing else)."""
    global _pass_seconds
    if _pass_seconds is not None:
        raise RuntimeError("pass_timer() is already open; nest nothing inside it")
    _pass_seconds = dict.fromkeys(PASSES, 0.0)
    try:
        yield _pass_seconds
    finally:
        _pass_seconds = None


class _Timed:
    def __init__(self, name: str, seconds: dict[str, float]):
        self.name, self.seconds = name, seconds

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds[self.name] += time.perf_counter() - self.start


def _range(name: str):
    """Around a kernel call: its time, while a pass_timer() is open; else `mp_hub::<name>` in a torch.profiler
    trace; else nothing (a profiler range costs far more than these checks)."""
    if _pass_seconds is not None:
        return _Timed(name, _pass_seconds)
    return torch.profiler.record_function("mp_hub::" + name) if _profiling() else nullcontext()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        logger.warning("PerturbSite backend 'fused' falls back to the eager path: %s", reason)


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
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return "called under torch.compile / tracing"
    functorch = getattr(torch._C, "_functorch", None)
    if functorch is not None and functorch.is_functorch_wrapped_tensor(x):
        return "called under a torch.func transform"
    return None


def kernels_for(site, x: Tensor, noise: Tensor | None) -> tuple[object, tuple[Tensor, ...]] | None:
    """(the loaded kernel library, φ's parameters) if this call should take the fused path, else None."""
    backend = site.backend or get_default_backend()
    if backend == "eager":
        return None
    params = phi_params(site.phi)
    reason = _ineligible(site, x, noise, params)
    if reason is None:
        lib = build.load()
        if lib is not None:
            return lib, params
        reason = f"the kernels could not be built ({build.load_error()})"
    if backend == "fused":
        _warn_once(reason)
    return None


@dataclass
class _Plan:
    lib: object
    site: object
    mode: int
    batch_stats: bool
    keys: tuple[int, int]
    kappa: float
    relu: int  # 1: the ReLU after the site is fused in (PerturbSite.fused_relu)


def _bit_masks(lib, h_dim: int) -> bool:
    """The forward keeps the scale features' ReLU masks as bits (AVX-512 builds, h = 4): then the backward
    through the batch statistics needs no x."""
    return h_dim == 4 and bool(lib.mp_has_masks())


def _ptr(t: Tensor | None):
    return None if t is None else t.data_ptr()


def _forward(plan: _Plan, x: Tensor, params: tuple[Tensor, ...], noise: Tensor | None, keep_masks: bool):
    """y, and what the backward needs besides x: (features, masks, scale, mean, var)."""
    site, lib = plan.site, plan.lib
    l1, g1, l2, g2, kernels, fc_weight = params
    batch, channels, height, width = x.shape
    h_dim, threads = kernels.shape[0], torch.get_num_threads()
    features = masks = None
    if plan.batch_stats:
        features = torch.empty(batch, channels, h_dim)
        if keep_masks and _bit_masks(lib, h_dim):  # ReLU masks as bits: the backward skips 4 stencils
            masks = torch.empty(batch * channels * ((height * (width + 2) + 15) // 16), dtype=torch.int64)
        with _range("features"):
            bad = lib.mp_features(x.data_ptr(), batch, channels, height, width, kernels.data_ptr(), h_dim,
                                  features.data_ptr(), _ptr(masks), threads)  # fmt: skip
        if bad:
            raise InvalidInputError("x has non-finite values (inf or nan) at a PerturbSite during training")
    stats = torch.empty(channels * (1 + 2 * h_dim))  # scale | mean | var of the features used
    scale, mean, var = stats[:channels], stats[channels : channels * (1 + h_dim)], stats[channels * (1 + h_dim) :]
    # updates the running statistics in place (in training), like the eager path's update_running_stats
    with _range("scale"):
        lib.mp_scale_forward(_ptr(features), batch, channels, h_dim, fc_weight.data_ptr(),
                             site.running_mean.data_ptr(), site.running_var.data_ptr(), site.momentum,
                             channels / site.channel_norm, height / site.spatial_norm, scale.data_ptr(),
                             mean.data_ptr(), var.data_ptr())  # fmt: skip
    y = torch.empty_like(x)
    with _range("forward"):
        lib.mp_forward_stacked(x.data_ptr(), y.data_ptr(), batch, channels, height, width, l1.data_ptr(),
                               g1.data_ptr(), l2.data_ptr(), g2.data_ptr(), scale.data_ptr(), plan.kappa,
                               site.clip_value, plan.relu, plan.mode, _ptr(noise), *plan.keys, threads)  # fmt: skip
    return y, (features, masks, scale, mean, var)


class _FusedSite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, noise, plan, *params):
        y, saved = _forward(plan, x, params, noise, keep_masks=ctx.needs_input_grad[0])
        ctx.save_for_backward(x, noise, *params, *saved)
        ctx.plan = plan
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, noise, l1, g1, l2, g2, kernels, fc_weight, features, masks, scale, mean, var = ctx.saved_tensors
        plan, lib = ctx.plan, ctx.plan.lib
        need_x, need_ng, need_k, need_fc = (
            ctx.needs_input_grad[0],
            any(ctx.needs_input_grad[3:7]),
            *ctx.needs_input_grad[7:9],
        )
        site = plan.site
        batch, channels, height, width = x.shape
        h_dim, threads = kernels.shape[0], torch.get_num_threads()
        grad_y = grad_y.contiguous()
        gx = torch.empty_like(x)
        gs = torch.empty(channels)
        gng = torch.empty(4, 9) if need_ng else None
        with _range("backward"):
            lib.mp_backward(x.data_ptr(), grad_y.data_ptr(), gx.data_ptr(), batch, channels, height, width,
                            l1.data_ptr(), g1.data_ptr(), l2.data_ptr(), g2.data_ptr(), scale.data_ptr(),
                            plan.kappa, site.clip_value, plan.relu, plan.mode, _ptr(noise), *plan.keys,
                            gs.data_ptr(), _ptr(gng), threads)  # fmt: skip
        through_stats = plan.batch_stats and (need_x or need_k)
        g_fc = torch.empty(2 * h_dim + 2) if need_fc else None
        coeff = torch.empty(batch, channels, h_dim) if through_stats else None
        with _range("scale_backward"):
            lib.mp_scale_backward(gs.data_ptr(), batch, channels, h_dim, scale.data_ptr(), mean.data_ptr(),
                                  var.data_ptr(), _ptr(features), fc_weight.data_ptr(), channels / site.channel_norm,
                                  height / site.spatial_norm, height * width, _ptr(g_fc), _ptr(coeff))  # fmt: skip
        g_k = None
        if through_stats:  # through the batch statistics of the scale features, back to x and the scale kernels
            g_k = torch.empty(h_dim, 9) if need_k else None
            with _range("features_backward"):
                lib.mp_features_backward(x.data_ptr(), _ptr(masks), gx.data_ptr(), batch, channels, height, width,
                                         kernels.data_ptr(), h_dim, coeff.data_ptr(), _ptr(g_k), threads)  # fmt: skip
        g_ng = [None] * 4 if gng is None else [g.view(1, 1, 3, 3) for g in gng.unbind(0)]
        return (
            gx if need_x else None, None, None, *g_ng,
            None if g_k is None else g_k.view_as(kernels),
            None if g_fc is None else g_fc.view_as(fc_weight),
        )  # fmt: skip


def site_forward(site, fast: tuple[object, tuple[Tensor, ...]], x: Tensor, noise: Tensor | None) -> Tensor:
    """y = site(x, noise) on the fused kernels; `fast` is what `kernels_for` returned for this call."""
    lib, params = fast
    x = x.contiguous()
    if site.inference_mode == "mean":  # like the eager path, "mean" ignores a given noise
        noise, mode, keys = None, MODE_MEAN, (0, 0)
    elif noise is not None:
        noise = noise.contiguous()
        mode, keys = MODE_EPS, (0, 0)
    else:  # keys from torch's default generator: torch.manual_seed reproduces the draws
        key = int(torch.randint(0, 2**62, ()))
        mode, keys = MODE_RNG, (key & 0x7FFFFFFF, key >> 31)
    batch_stats = site.training and x.shape[0] >= 2
    plan = _Plan(lib, site, mode, batch_stats, keys, float(site.noise_coeff), int(site.fused_relu))
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _FusedSite.apply(x, noise, plan, *(p.contiguous() for p in params))
    with torch.no_grad():
        return _forward(plan, x, tuple(p.contiguous() for p in params), noise, keep_masks=False)[0]


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
