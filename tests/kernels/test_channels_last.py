"""The fused kernels on channels-last (NHWC) tensors, what a channels-last model and torch.compile's CPU
convolutions hand a site: read and written as they are, with bit for bit the results of the NCHW path."""

import pytest
import torch
from _builders import make_phi

from mp_hub import PerturbSite, kernels
from mp_hub.kernels import fused, passes


@pytest.fixture(scope="module", autouse=True)
def _needs_kernels():
    if not kernels.fused_available():
        pytest.skip(f"fused kernels unavailable here: {kernels.build.load_error()}")


def run_site(x, layout, *, training, mode, trainable_phi, relu, through_ops):
    """y, running statistics and gradients (x and φ) of one fused site on x in `layout`."""
    phi = make_phi()
    for p in phi.parameters():
        p.requires_grad_(trainable_phi)
    site = PerturbSite(phi, x.shape[1], spatial_norm=8, noise_coeff=0.7, clip_value=1.5, backend="fused")
    site.train(training).fused_relu = relu
    if mode == passes.MODE_MEAN:
        site.set_inference_mode("mean")
    x = x.detach().contiguous(memory_format=layout).requires_grad_()
    torch.manual_seed(1)
    noise = torch.randn(x.shape) if mode == passes.MODE_EPS else None
    if through_ops:  # what a site runs under torch.compile, called directly
        y = fused.site_forward_op(site, fused.kernels_for(site, x, noise), x, noise, mode, site.training)
    else:
        y = site(x, noise=noise)
    grad_y = torch.linspace(-1, 1, y.numel()).view_as(y).contiguous(memory_format=layout)
    y.backward(grad_y)
    return y, x.grad, site.running_mean, site.running_var, [p.grad for p in phi.parameters()]


# channels 1 and planes 1x1 are dense in both layouts (the NCHW path serves them); odd planes test the edges;
# channels in multiples of 8 (AVX2) and 16 (AVX-512) take the blocked transposes, the last n % 8 or 16 positions
# the element-wise ones (all of them where a plane has fewer); the scale features' padded planes go row by row,
# in blocks of 8 or 16 positions and the rest of the row one by one (several blocks to a row at width 32, a block
# and a rest at 20)
SHAPES = [(3, 5, 7, 6), (2, 16, 8, 8), (4, 3, 1, 9), (2, 64, 4, 4), (2, 8, 3, 5), (2, 48, 5, 7), (2, 16, 2, 3),
          (2, 16, 3, 32), (2, 16, 2, 20)]  # fmt: skip
CASES = [
    (True, passes.MODE_RNG, True, True),
    (True, passes.MODE_EPS, False, False),
    (True, passes.MODE_RNG, False, True),
    (False, passes.MODE_MEAN, True, False),
    (False, passes.MODE_RNG, False, True),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("training", "mode", "trainable_phi", "relu"), CASES)
@pytest.mark.parametrize("through_ops", [False, True])
def test_channels_last_gives_the_nchw_results_bit_for_bit(shape, training, mode, trainable_phi, relu, through_ops):
    torch.manual_seed(0)
    x = 2 * torch.randn(shape)
    kwargs = dict(training=training, mode=mode, trainable_phi=trainable_phi, relu=relu, through_ops=through_ops)
    y0, gx0, m0, v0, g0 = run_site(x, torch.contiguous_format, **kwargs)
    y1, gx1, m1, v1, g1 = run_site(x, torch.channels_last, **kwargs)
    assert passes.channels_last(y1) and passes.channels_last(gx1)  # written in the layout they came in
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1)
    assert torch.equal(m0, m1) and torch.equal(v0, v1)
    for a, b in zip(g0, g1):
        assert (a is None and b is None) or torch.equal(a, b)


def test_dense_keeps_nchw_and_channels_last_and_copies_the_rest():
    x = torch.randn(2, 3, 4, 5)
    last = x.contiguous(memory_format=torch.channels_last)
    assert passes.dense(x) is x and passes.dense(last) is last
    assert passes.channels_last(last) and not passes.channels_last(x)
    assert not passes.channels_last(torch.randn(2, 1, 4, 5).contiguous(memory_format=torch.channels_last))
    strided = x.transpose(2, 3)
    assert passes.dense(strided).is_contiguous() and torch.equal(passes.dense(strided), strided)
