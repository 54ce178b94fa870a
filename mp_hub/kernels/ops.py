"""The fused kernels as `torch.library` custom ops, `mp_hub::site_forward` and `mp_hub::site_backward`: what a site
calls under torch.compile (`fused.site_forward`), so that a compiled model keeps the kernels, in one graph.

Each op has a fake (shape-only) implementation for tracing, and `site_forward` an autograd formula that calls
`site_backward`, so AOT autograd puts the backward kernels in the compiled backward graph. The ops are functional,
as torch.library requires of an op with an autograd formula: `site_forward` returns the updated running statistics
instead of writing them (the caller copies them into the site's buffers). Everything a kernel call needs besides
tensors comes as plain arguments; κ and the generator key come as tensors, read by the op itself (no host read in
the traced code), and κ goes back out in `stats`, so the backward uses the forward's κ whatever the buffer holds
by then. Tensors an op does not produce for this call (no batch statistics, no bit masks, a gradient not asked
for) are empty.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import build, passes
from .passes import SiteCall

NAMESPACE = "mp_hub"
EMPTY = (0,)  # the shape of an output this call does not produce


def _lib():
    lib = build.load()
    if lib is None:  # the caller checked; a process that lost them since (it cannot) would otherwise crash in C
        raise build.KernelBuildError(f"the fused kernels cannot be built here: {build.load_error()}")
    return lib


def _call(kappa: float, key: Tensor | None, mode: int, batch_stats: bool, clip: float, relu: bool, momentum: float,
          channel_norm: float, spatial_norm: float) -> SiteCall:  # fmt: skip
    keys = passes.split_key(int(key)) if key is not None else (0, 0)
    return SiteCall(mode, batch_stats, kappa, clip, int(relu), momentum, channel_norm, spatial_norm, keys)


def _empties(x: Tensor, count: int) -> tuple[Tensor, ...]:
    """`count` distinct empty outputs (an op's outputs may not alias one another)."""
    return tuple(x.new_empty(EMPTY) for _ in range(count))


def _contiguous(x: Tensor, noise: Tensor | None, *params: Tensor) -> tuple[Tensor, Tensor | None, tuple[Tensor, ...]]:
    """The kernels read x as dense NCHW or channels-last memory, the rest as dense NCHW: a compiled graph may hand
    an op other strides."""
    return passes.dense(x), None if noise is None else noise.contiguous(), tuple(p.contiguous() for p in params)


# flexible_layout: inductor hands the ops x and dL/dy in the layout it has them, not the strides seen while tracing;
# its CPU convolutions run channels-last, which the kernels read as it is instead of through two copies per op.
# The outputs take x's layout (`passes.dense`), in the fake implementations as in the kernels.
LAYOUT = (torch.Tag.flexible_layout,)


@torch.library.custom_op(f"{NAMESPACE}::site_forward", mutates_args=(), tags=LAYOUT)
def site_forward(
    x: Tensor,
    noise: Tensor | None,
    lambda1: Tensor,
    gamma1: Tensor,
    lambda2: Tensor,
    gamma2: Tensor,
    scale_kernels: Tensor,
    fc_weight: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    noise_coeff: Tensor,
    key: Tensor | None,
    mode: int,
    batch_stats: bool,
    clip: float,
    relu: bool,
    momentum: float,
    channel_norm: float,
    spatial_norm: float,
    keep_masks: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, features, masks, stats + κ, new running mean, new running var); the last two empty without
    `batch_stats`, masks empty where the backward recomputes them from x."""
    lib = _lib()
    x, noise, params = _contiguous(x, noise, lambda1, gamma1, lambda2, gamma2, scale_kernels, fc_weight)
    call = _call(float(noise_coeff), key, mode, batch_stats, clip, relu, momentum, channel_norm, spatial_norm)
    dense = torch.contiguous_format
    new_mean, new_var = (
        (running_mean.clone(memory_format=dense), running_var.clone(memory_format=dense))
        if batch_stats
        else _empties(x, 2)
    )
    channels, h_dim = x.shape[1], scale_kernels.shape[0]
    stats = x.new_empty(passes.stats_size(channels, h_dim) + 1)  # scale | mean | var | κ
    stats[-1] = call.kappa
    y, (features, masks, *_) = passes.forward(
        lib, call, x, params, noise, new_mean if batch_stats else running_mean,
        new_var if batch_stats else running_var, keep_masks, stats,
    )  # fmt: skip
    features = x.new_empty(EMPTY) if features is None else features
    masks = x.new_empty(EMPTY, dtype=torch.int64) if masks is None else masks
    return y, features, masks, stats, new_mean, new_var


@site_forward.register_fake
def _(x, noise, lambda1, gamma1, lambda2, gamma2, scale_kernels, fc_weight, running_mean, running_var,
      noise_coeff, key, mode, batch_stats, clip, relu, momentum, channel_norm, spatial_norm, keep_masks):  # fmt: skip
    batch, channels, height, width = x.shape
    h_dim = scale_kernels.shape[0]
    features = x.new_empty((batch, channels, h_dim) if batch_stats else EMPTY)
    with_masks = batch_stats and keep_masks and passes.bit_masks(_lib(), h_dim)
    masks = x.new_empty(passes.mask_words(*x.shape) if with_masks else 0, dtype=torch.int64)
    stats = x.new_empty(passes.stats_size(channels, h_dim) + 1)
    running = (x.new_empty(running_mean.shape), x.new_empty(running_var.shape)) if batch_stats else _empties(x, 2)
    return torch.empty_like(passes.dense(x)), features, masks, stats, *running  # as the kernels write them


@torch.library.custom_op(f"{NAMESPACE}::site_backward", mutates_args=(), tags=LAYOUT)
def site_backward(
    grad_y: Tensor,
    x: Tensor,
    noise: Tensor | None,
    lambda1: Tensor,
    gamma1: Tensor,
    lambda2: Tensor,
    gamma2: Tensor,
    scale_kernels: Tensor,
    fc_weight: Tensor,
    features: Tensor,
    masks: Tensor,
    stats: Tensor,
    key: Tensor | None,
    mode: int,
    batch_stats: bool,
    clip: float,
    relu: bool,
    momentum: float,
    channel_norm: float,
    spatial_norm: float,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dL/dx, dL/d noise generator (4, 9), dL/d scale kernels (h, 9), dL/d fc weight (2h + 2,)); the ones
    `needs` does not ask for are empty."""
    lib = _lib()
    x, noise, params = _contiguous(x, noise, lambda1, gamma1, lambda2, gamma2, scale_kernels, fc_weight)
    call = _call(float(stats[-1]), key, mode, batch_stats, clip, relu, momentum, channel_norm, spatial_norm)
    stats = stats.contiguous()
    saved = (
        features.contiguous() if features.numel() else None,
        masks.contiguous() if masks.numel() else None,
        *passes.split_stats(stats, x.shape[1], scale_kernels.shape[0]),
    )
    grads = passes.backward(lib, call, grad_y, x, noise, params, saved, tuple(needs))
    return tuple(x.new_empty(EMPTY) if g is None else g for g in grads)


@site_backward.register_fake
def _(grad_y, x, noise, lambda1, gamma1, lambda2, gamma2, scale_kernels, fc_weight, features, masks, stats, key,
      mode, batch_stats, clip, relu, momentum, channel_norm, spatial_norm, needs):  # fmt: skip
    h_dim = scale_kernels.shape[0]
    need_ng, need_k, need_fc = needs[1:]
    through_stats = batch_stats and (needs[0] or need_k)
    return (
        torch.empty_like(passes.dense(x)),
        x.new_empty((4, 9) if need_ng else EMPTY),
        x.new_empty((h_dim, 9) if need_k and through_stats else EMPTY),
        x.new_empty((2 * h_dim + 2,) if need_fc else EMPTY),
    )


_TENSORS = 12  # site_forward's tensor arguments come first: x, noise, the six of φ, the running stats, κ, key


def _setup_context(ctx, inputs, output):
    x, noise, *params = inputs[:8]
    key, scalars = inputs[11], inputs[_TENSORS:-1]
    _, features, masks, stats, new_mean, new_var = output
    ctx.save_for_backward(x, noise, *params, features, masks, stats, key)
    ctx.scalars = scalars  # mode, batch_stats, clip, relu, momentum, channel_norm, spatial_norm
    ctx.mark_non_differentiable(features, masks, stats, new_mean, new_var)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_y, *unused):
    x, noise, *params, features, masks, stats, key = ctx.saved_tensors
    wanted = ctx.needs_input_grad
    needs = [wanted[0], any(wanted[2:6]), wanted[6], wanted[7]]
    if grad_y is None or not any(needs):
        return (None,) * len(wanted)
    gx, g_ng, g_k, g_fc = site_backward(grad_y, x, noise, *params, features, masks, stats, key, *ctx.scalars, needs)
    g_ng = [g.view(1, 1, 3, 3) for g in g_ng.unbind(0)] if needs[1] else [None] * 4
    batch_stats = ctx.scalars[1]  # without them the scale kernels get no gradient (running statistics used)
    g_k = g_k.view_as(params[4]) if needs[2] and batch_stats else None
    g_fc = g_fc.view_as(params[5]) if needs[3] else None
    return (gx if needs[0] else None, None, *g_ng, g_k, g_fc, *(None,) * (len(wanted) - 8))


site_forward.register_autograd(_backward, setup_context=_setup_context)
