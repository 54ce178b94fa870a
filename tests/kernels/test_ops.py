"""mp_hub.kernels.ops: the fused kernels as torch.library custom ops (torch.library.opcheck: schema, fake tensors,
autograd registration, AOT dispatch), bitwise the eager autograd.Function's results, and κ fixed at the forward."""

import pytest
import torch
from _builders import make_phi

from mp_hub import PerturbSite, kernels
from mp_hub.kernels import fused, ops, passes


@pytest.fixture(scope="module", autouse=True)
def _needs_kernels():
    if not kernels.fused_available():
        pytest.skip(f"fused kernels unavailable here: {kernels.build.load_error()}")


def op_arguments(site, x, noise, mode, keep_masks=True):
    """site_forward's arguments for this site and x, as the compiled path builds them."""
    key = torch.tensor(123456789012345) if mode == passes.MODE_RNG else None
    batch_stats = site.training and x.shape[0] >= 2
    return (x, noise, *fused.phi_params(site.phi), site.running_mean.clone(), site.running_var.clone(),
            site.noise_coeff.clone(), key, mode, batch_stats, site.clip_value, site.fused_relu, site.momentum,
            site.channel_norm, site.spatial_norm, keep_masks)  # fmt: skip


# (training, mode, trainable φ, fused ReLU): every output shape the ops produce, gradients to x and to φ
CASES = [
    (True, passes.MODE_RNG, True, True),
    (True, passes.MODE_EPS, False, False),
    (False, passes.MODE_MEAN, True, False),
]


@pytest.mark.parametrize(("training", "mode", "trainable_phi", "relu"), CASES)
def test_opcheck_the_forward_and_backward_ops(training, mode, trainable_phi, relu):
    phi = make_phi()
    for p in phi.parameters():
        p.requires_grad_(trainable_phi)
    site = PerturbSite(phi, 3, spatial_norm=8, noise_coeff=0.7, clip_value=1.5).train(training)
    site.fused_relu = relu
    torch.manual_seed(0)
    x = (2 * torch.randn(4, 3, 5, 6)).requires_grad_()
    noise = torch.randn(4, 3, 5, 6) if mode == passes.MODE_EPS else None
    args = op_arguments(site, x, noise, mode)
    torch.library.opcheck(ops.site_forward, args)
    y, features, masks, stats, _, _ = ops.site_forward(*args)
    params = args[2:8]
    needs = [True, trainable_phi, trainable_phi, trainable_phi]
    backward_args = (torch.randn_like(y), x.detach(), noise, *(p.detach() for p in params), features, masks, stats,
                     args[11], *args[12:19], needs)  # fmt: skip
    torch.library.opcheck(ops.site_backward, backward_args)


@pytest.mark.parametrize(("training", "mode", "trainable_phi", "relu"), CASES)
def test_the_ops_give_the_autograd_functions_results_bit_for_bit(training, mode, trainable_phi, relu):
    """The compiled path (ops) and the eager one (autograd.Function) run the same passes on the same arguments."""
    results = []
    for through_ops in (False, True):
        phi = make_phi()
        for p in phi.parameters():
            p.requires_grad_(trainable_phi)
        site = PerturbSite(phi, 3, spatial_norm=8, noise_coeff=0.7, clip_value=1.5, backend="fused").train(training)
        site.fused_relu = relu
        torch.manual_seed(0)
        x = (2 * torch.randn(4, 3, 5, 6)).requires_grad_()
        noise = torch.randn(4, 3, 5, 6) if mode == passes.MODE_EPS else None
        if mode == passes.MODE_MEAN:
            site.set_inference_mode("mean")
        torch.manual_seed(1)
        if through_ops:  # what site_forward runs under torch.compile, called directly
            y = fused.site_forward_op(site, fused.kernels_for(site, x, noise), x, noise, mode, site.training)
        else:
            y = site(x, noise=noise)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        grads = [x.grad] + [p.grad for p in phi.parameters()]
        results.append((y, site.running_mean, site.running_var, grads))
    (y0, m0, v0, g0), (y1, m1, v1, g1) = results
    assert torch.equal(y0, y1) and torch.equal(m0, m1) and torch.equal(v0, v1)
    for a, b in zip(g0, g1):
        assert (a is None and b is None) or torch.equal(a, b)


def test_the_backward_uses_the_forwards_noise_coeff():
    """κ goes into the op as a tensor and comes back in `stats`: writing the buffer before the backward (as
    `set_noise_coeff` or DDP's buffer broadcast do) changes nothing in the gradients."""
    grads = []
    for write_between in (False, True):
        site = PerturbSite(make_phi(), 3, spatial_norm=8, noise_coeff=0.7, backend="fused").train()
        x = torch.randn(4, 3, 5, 6, requires_grad=True)
        y = fused.site_forward_op(site, fused.phi_params(site.phi), x, None, passes.MODE_MEAN, True)
        if write_between:
            site.set_noise_coeff(0.1)
        y.sum().backward()
        grads.append(x.grad)
    assert torch.equal(*grads)
