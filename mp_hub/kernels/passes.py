"""The fused kernels' passes over a site's tensors, as plain functions of tensors and a `SiteCall`: what both the
eager `autograd.Function` (`fused.py`) and the `torch.library` custom ops (`ops.py`) run.

Passes over the (B, C, H, W) tensors per training step of one site:
  forward   1. scale features, their ReLU masks, the non-finite check (reads x)
            2. μ, noise, multiplier, clamp (reads x, writes y)
  backward  3. recompute μ and the noise; dL/dx through the multiplier and the noise generator; dL/ds, dL/dφ
            4. dL/dx through the batch statistics of the scale features, from the saved masks (adds into gx)
(2 and 3 on the stacked layout of `csrc/stacked.c`.) Saved for backward: x, the masks as bits (an eighth of x's
size) and the caller's noise if it passed one; μ, the other ReLU masks and the generated noise are recomputed,
which keeps a perturbed step's memory close to the bare model's. (Keeping μ + ε and the CEO1 masks instead of
x, for frozen φ, saved no time once pass 3 ran on the stacked layout, and was removed.)
The tiny per-channel math (moments, running statistics, s = sigmoid(w · [...]) and its backward) is in C too:
dozens of small torch ops less per site and step.
Under torch.profiler every kernel call is a named range, `mp_hub::<pass>` with the pass one of `PASSES`;
`pass_timer()` adds up their wall-clock time instead (`benchmarks/overhead.py --breakdown`): the profiler's
ranges also hold some of the profiler's own cost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import InvalidInputError

MODE_EPS, MODE_RNG, MODE_MEAN = 0, 1, 2
# the kernel calls, in step order: 1 scale features, the scale, 2 the site's forward; backward: 3, the scale's, 4
PASSES = ("features", "scale", "forward", "backward", "scale_backward", "features_backward")
NON_FINITE_MESSAGE = "x has non-finite values (inf or nan) at a PerturbSite during training"
_profiling = getattr(torch._C._autograd, "_profiler_enabled", lambda: False)
_timer: dict[str, dict[str, float] | None] = {"seconds": None}  # the open pass_timer()'s dict, if any


@contextmanager
def pass_timer() -> Iterator[dict[str, float]]:
    """Wall-clock seconds in each kernel pass (`PASSES`) while the block runs, added up into the dict it yields
    (time.perf_counter around each kernel call, nothing else)."""
    if _timer["seconds"] is not None:
        raise RuntimeError("pass_timer() is already open; nest nothing inside it")
    _timer["seconds"] = dict.fromkeys(PASSES, 0.0)
    try:
        yield _timer["seconds"]
    finally:
        _timer["seconds"] = None


def pass_timer_open() -> bool:
    return _timer["seconds"] is not None


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
    if _timer["seconds"] is not None:
        return _Timed(name, _timer["seconds"])
    return torch.profiler.record_function("mp_hub::" + name) if _profiling() else nullcontext()


class SiteCall(NamedTuple):  # a tuple: built on every call, the cheapest record
    """Everything a site's kernel calls need besides tensors, as plain values (fixed for one forward and its
    backward): κ is read once, when the forward runs, so a later `set_noise_coeff` cannot reach the backward."""

    mode: int  # MODE_EPS (noise given), MODE_RNG (drawn from `keys`), MODE_MEAN (E[softplus])
    batch_stats: bool  # training with a batch of 2 or more: batch statistics, running ones updated
    kappa: float
    clip: float
    relu: int  # 1: the ReLU after the site is fused in (PerturbSite.fused_relu)
    momentum: float
    channel_norm: float
    spatial_norm: float
    keys: tuple[int, int] = (0, 0)


def split_key(key: int) -> tuple[int, int]:
    """The two 31-bit generator keys from one draw of torch.randint(0, 2**62)."""
    return key & 0x7FFFFFFF, key >> 31


def bit_masks(lib, h_dim: int) -> bool:
    """The forward keeps the scale features' ReLU masks as bits (AVX-512 builds, h = 4): then the backward
    through the batch statistics needs no x."""
    return h_dim == 4 and bool(lib.mp_has_masks())


def mask_words(batch, channels, height, width):
    """int64 words of the bit masks of an x of this shape (ints or symbolic sizes alike)."""
    return batch * channels * ((height * (width + 2) + 15) // 16)


def stats_size(channels, h_dim):
    """scale | mean | var of the features used: C·(1 + 2h) floats."""
    return channels * (1 + 2 * h_dim)


def split_stats(stats: Tensor, channels: int, h_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """scale (C,), mean and var (C·h each): views of the first `stats_size` floats of `stats`."""
    mean_end = channels * (1 + h_dim)
    return stats[:channels], stats[channels:mean_end], stats[mean_end : mean_end + channels * h_dim]


def _ptr(t: Tensor | None):
    return None if t is None else t.data_ptr()


def channels_last(x: Tensor) -> bool:
    """x is dense channels-last (NHWC) memory and not also dense NCHW: the kernels' `nhwc` layout."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def dense(x: Tensor) -> Tensor:
    """x in a layout the kernels read: as it is when dense NCHW or channels-last (a channels-last model, or what
    torch.compile's convolutions produce on CPU), else an NCHW copy."""
    return x if x.is_contiguous() or channels_last(x) else x.contiguous()


def forward(
    lib,
    call: SiteCall,
    x: Tensor,
    params: tuple[Tensor, ...],
    noise: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    keep_masks: bool,
    stats: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor | None, Tensor | None, Tensor, Tensor, Tensor]]:
    """y, and what the backward needs besides x: (features, masks, scale, mean, var), the last three views of
    `stats` (allocated here if not given, `stats_size` floats or more). With `call.batch_stats` the running
    statistics are updated in place, like the eager path's `update_running_stats`. x is `dense`; y comes in its
    layout, and a given noise is dense NCHW whatever x's layout."""
    l1, g1, l2, g2, kernels, fc_weight = params
    batch, channels, height, width = x.shape
    h_dim, threads, nhwc = kernels.shape[0], torch.get_num_threads(), int(channels_last(x))
    features = masks = None
    if call.batch_stats:
        features = torch.empty(batch, channels, h_dim)
        if keep_masks and bit_masks(lib, h_dim):  # ReLU masks as bits: the backward skips 4 stencils
            masks = torch.empty(mask_words(batch, channels, height, width), dtype=torch.int64)
        with _range("features"):
            bad = lib.mp_features(x.data_ptr(), batch, channels, height, width, kernels.data_ptr(), h_dim,
                                  features.data_ptr(), _ptr(masks), nhwc, threads)  # fmt: skip
        if bad:
            raise InvalidInputError(NON_FINITE_MESSAGE)
    stats = torch.empty(stats_size(channels, h_dim)) if stats is None else stats
    scale, mean, var = split_stats(stats, channels, h_dim)
    with _range("scale"):
        lib.mp_scale_forward(_ptr(features), batch, channels, h_dim, fc_weight.data_ptr(), running_mean.data_ptr(),
                             running_var.data_ptr(), call.momentum, channels / call.channel_norm,
                             height / call.spatial_norm, scale.data_ptr(), mean.data_ptr(), var.data_ptr())  # fmt: skip
    y = torch.empty_like(x)
    with _range("forward"):
        lib.mp_forward_stacked(x.data_ptr(), y.data_ptr(), batch, channels, height, width, l1.data_ptr(),
                               g1.data_ptr(), l2.data_ptr(), g2.data_ptr(), scale.data_ptr(), call.kappa, call.clip,
                               call.relu, call.mode, _ptr(noise), *call.keys, nhwc, threads)  # fmt: skip
    return y, (features, masks, scale, mean, var)


def backward(
    lib,
    call: SiteCall,
    grad_y: Tensor,
    x: Tensor,
    noise: Tensor | None,
    params: tuple[Tensor, ...],
    saved: tuple[Tensor | None, Tensor | None, Tensor, Tensor, Tensor],
    needs: tuple[bool, bool, bool, bool],
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """dL/dx, dL/d(λ₁, γ₁, λ₂, γ₂) as a (4, 9) tensor, dL/d(scale kernels) as (h, 9), dL/d(fc weight) as (2h + 2,);
    `needs` says which of the four are wanted (x, the noise generator, the scale kernels, the fc weight): the
    others come back None. dL/dx is computed whatever `needs[0]` says (pass 3 writes it), in x's layout."""
    need_x, need_ng, need_k, need_fc = needs
    l1, g1, l2, g2, kernels, fc_weight = params
    features, masks, scale, mean, var = saved
    batch, channels, height, width = x.shape
    h_dim, threads, nhwc = kernels.shape[0], torch.get_num_threads(), int(channels_last(x))
    grad_y = grad_y.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    gx = torch.empty_like(x)
    gs = torch.empty(channels)
    gng = torch.empty(4, 9) if need_ng else None
    with _range("backward"):
        lib.mp_backward(x.data_ptr(), grad_y.data_ptr(), gx.data_ptr(), batch, channels, height, width,
                        l1.data_ptr(), g1.data_ptr(), l2.data_ptr(), g2.data_ptr(), scale.data_ptr(), call.kappa,
                        call.clip, call.relu, call.mode, _ptr(noise), *call.keys, gs.data_ptr(), _ptr(gng), nhwc,
                        threads)  # fmt: skip
    through_stats = call.batch_stats and (need_x or need_k)
    g_fc = torch.empty(2 * h_dim + 2) if need_fc else None
    coeff = torch.empty(batch, channels, h_dim) if through_stats else None
    with _range("scale_backward"):
        lib.mp_scale_backward(gs.data_ptr(), batch, channels, h_dim, scale.data_ptr(), mean.data_ptr(),
                              var.data_ptr(), _ptr(features), fc_weight.data_ptr(), channels / call.channel_norm,
                              height / call.spatial_norm, height * width, _ptr(g_fc), _ptr(coeff))  # fmt: skip
    g_k = None
    if through_stats:  # through the batch statistics of the scale features, back to x and the scale kernels
        g_k = torch.empty(h_dim, 9) if need_k else None
        with _range("features_backward"):
            lib.mp_features_backward(x.data_ptr(), _ptr(masks), gx.data_ptr(), batch, channels, height, width,
                                     kernels.data_ptr(), h_dim, coeff.data_ptr(), _ptr(g_k), nhwc, threads)  # fmt: skip
    return gx, gng, g_k, g_fc
