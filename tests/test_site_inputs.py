"""What a site takes: float16/bfloat16/float64 inputs with a float32 φ, autocast, half models, non-finite values."""

from pathlib import Path

import pytest
import torch
from _builders import ConvNet, make_phi

import mp_hub
from mp_hub import InvalidInputError, MetaPerturb, PerturbSite, kernels
from mp_hub.kernels import fused

SHAPE = (4, 6, 5, 7)
# relative tolerance of each dtype against the float32 eager computation: a few of its rounding steps
TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float64: 1e-5}
PADDED_REFERENCE = Path(__file__).parent / "kernels" / "padded_reference.c"  # mp_forward, test-only
TARGETS = dict(targets=r"blocks\.\d+\.2", placement="input", spatial_norm=8)  # the ReLUs of ConvNet


@pytest.fixture(scope="module", autouse=True)
def _needs_kernels():
    if not kernels.fused_available():
        pytest.skip(f"fused kernels unavailable here: {fused.build.load_error()}")


def make_site(phi, backend, mode, training, channels=SHAPE[1]):
    site = PerturbSite(phi, channels, spatial_norm=8, noise_coeff=0.7, clip_value=1.5, inference_mode=mode,
                       backend=backend)  # fmt: skip
    with torch.no_grad():
        site.running_mean.copy_(torch.linspace(0.0, 0.5, site.running_mean.numel()).view_as(site.running_mean))
        site.running_var.copy_(torch.linspace(0.1, 0.4, site.running_var.numel()).view_as(site.running_var))
    return site.train(training)


def close(actual, expected, tol):
    scale = max(1.0, expected.abs().max().item())
    gap = (actual.double() - expected.double()).abs().max().item()
    assert gap <= tol * scale, gap


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("backend", ["eager", "fused", "auto"])
@pytest.mark.parametrize("mode", ["mc", "mean"])
@pytest.mark.parametrize("training", [True, False])
def test_a_float32_site_takes_half_and_double_inputs(dtype, backend, mode, training):
    """y and dL/dx in x's dtype, dL/dφ and the running statistics in float32, all as the float32 eager site gives
    them on the same values."""
    phi, phi_ref = make_phi(), make_phi()
    site, ref = make_site(phi, backend, mode, training), make_site(phi_ref, "eager", mode, training)
    torch.manual_seed(1)
    x = (2 * torch.randn(SHAPE)).to(dtype).requires_grad_()
    x_ref = x.detach().float().requires_grad_()
    eps = torch.randn(SHAPE)
    y, y_ref = site(x, noise=eps.to(dtype)), ref(x_ref, noise=eps.to(dtype).float())
    assert y.dtype == dtype
    close(y, y_ref, TOLERANCE[dtype])
    assert site.running_mean.dtype == site.running_var.dtype == torch.float32
    close(site.running_mean, ref.running_mean, 1e-5)
    close(site.running_var, ref.running_var, 1e-5)
    grad_y = torch.randn(SHAPE).to(dtype)
    y.backward(grad_y)
    y_ref.backward(grad_y.float())
    assert x.grad.dtype == dtype
    close(x.grad, x_ref.grad, TOLERANCE[dtype])
    for (name, p), p_ref in zip(phi.named_parameters(), phi_ref.parameters()):
        assert (p.grad is None) == (p_ref.grad is None), name
        if p.grad is not None:
            assert p.grad.dtype == torch.float32, name
            close(p.grad, p_ref.grad, 1e-4)


@pytest.mark.parametrize("backend", ["eager", "fused"])
def test_autocast_leaves_the_site_math_in_float32(backend):
    """Under torch.autocast a bfloat16 x gets the same y as without (φ's convolutions are not lowered), and an
    attached model trains under autocast with float32 site statistics and φ gradients."""
    site = make_site(make_phi(), backend, "mean", training=False)
    x = torch.randn(SHAPE).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_autocast = site(x)
    assert torch.equal(y_autocast, site(x))

    model = ConvNet(seed=0).train()
    handle = mp_hub.attach(model, make_phi(scale=10.0), trainable_phi=True, **TARGETS)
    for s in handle.site_list():
        s.set_backend(backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(4, 3, 8, 8))
    out.float().sum().backward()
    assert torch.isfinite(out).all()
    for s in handle.site_list():
        assert s.running_mean.dtype == torch.float32 and not torch.equal(s.running_var, torch.ones_like(s.running_var))
    assert all(p.grad.dtype == torch.float32 for p in handle.phi.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_model_converted_to_half_keeps_its_site_buffers_in_float32(dtype):
    """model.to(half): φ follows (its gradient in its dtype), the running statistics and κ stay float32 and update."""
    model = ConvNet(seed=0)
    handle = mp_hub.attach(model, make_phi(scale=10.0), trainable_phi=True, **TARGETS)
    handle.set_noise_coeff(0.3)
    model.to(dtype).train()
    out = model(torch.randn(4, 3, 8, 8).to(dtype))
    out.float().sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert all(p.dtype == dtype and p.grad.dtype == dtype for p in handle.phi.parameters())
    for s in handle.site_list():
        assert s.noise_coeff.item() == pytest.approx(0.3, abs=1e-7)
        assert {b.dtype for b in s.buffers()} == {torch.float32}
        assert not torch.equal(s.running_var, torch.ones_like(s.running_var))  # updated from the half batch
    model.eval()
    assert torch.isfinite(model(torch.randn(2, 3, 8, 8).to(dtype))).all()
    # attaching to a model that is already half keeps them float32 as well; .double() still converts them
    half = mp_hub.attach(ConvNet(seed=0).to(dtype), MetaPerturb(), **TARGETS).model
    assert {b.dtype for b in half.metaperturb_sites.buffers()} == {torch.float32}
    assert {b.dtype for b in half.double().metaperturb_sites.buffers()} == {torch.float64}


def test_an_unsupported_dtype_is_a_typed_error():
    site = make_site(make_phi(), "eager", "mc", training=False)
    with pytest.raises(InvalidInputError, match="float16, bfloat16, float32, float64"):
        site(torch.randn(SHAPE).to(torch.float8_e4m3fn))
    with pytest.raises(InvalidInputError, match="noise"):
        site(torch.randn(SHAPE), noise=torch.zeros(SHAPE, dtype=torch.int64))


def non_finite_input():
    torch.manual_seed(3)
    x = 2 * torch.randn(SHAPE)
    x[1, 3, 2, 4] = float("nan")
    x[2, 0, 0, 6] = float("inf")  # a corner: row and plane edges
    x[3, 5, 4, 0] = -float("inf")
    return x


def assert_same_non_finite(y, y_ref):
    """NaN, +inf and -inf at exactly the same positions, and the finite values equal to float32 rounding."""
    for kind in (torch.isnan, torch.isposinf, torch.isneginf):
        assert torch.equal(kind(y), kind(y_ref)), (kind.__name__, kind(y).sum().item(), kind(y_ref).sum().item())
    finite = torch.isfinite(y_ref)
    close(y[finite], y_ref[finite], 2e-5)


@pytest.mark.parametrize("mode", ["mc", "mean"])
@pytest.mark.parametrize("fused_relu", [False, True])
def test_non_finite_inputs_in_eval_give_the_same_output_on_both_backends(mode, fused_relu):
    """A NaN spreads through the channel mean and the 3×3 stencils of both CEOs (5×5 in every channel of its
    image): the fused kernels must spread it as torch's ops do, and keep it through the (fused) ReLU."""
    phi = make_phi()
    fast, ref = make_site(phi, "fused", mode, False), make_site(phi, "eager", mode, False)
    fast.fused_relu = ref.fused_relu = fused_relu
    x, eps = non_finite_input(), torch.randn(SHAPE)
    y, y_ref = fast(x, noise=eps), ref(x, noise=eps)
    assert torch.isnan(y_ref).sum() >= 5 * 5 * SHAPE[1]
    assert_same_non_finite(y, y_ref)


@pytest.mark.parametrize("mode", [fused.MODE_EPS, fused.MODE_MEAN])
@pytest.mark.parametrize("relu", [0, 1])
def test_non_finite_inputs_spread_alike_in_both_kernel_layouts(mode, relu):
    """The sites run the stacked layout (mp_forward_stacked); its padded reference (mp_forward) must agree with
    the eager output too."""
    phi, lib = make_phi(), fused.build.load()
    reference = fused.build.load_extended(PADDED_REFERENCE, {"mp_forward": "mp_forward_stacked"})
    ref = make_site(phi, "eager", "mean" if mode == fused.MODE_MEAN else "mc", False)
    ref.fused_relu = bool(relu)
    x, eps = non_finite_input(), torch.randn(SHAPE)
    y_ref = ref(x, noise=eps)
    l1, g1, l2, g2 = (k.detach().contiguous() for k in fused.phi_params(phi)[:4])
    scale = ref.scale(x).detach().contiguous()
    for forward in (reference.mp_forward, lib.mp_forward_stacked):
        y = torch.empty_like(x)
        forward(x.data_ptr(), y.data_ptr(), *SHAPE, l1.data_ptr(), g1.data_ptr(), l2.data_ptr(), g2.data_ptr(),
                scale.data_ptr(), 0.7, 1.5, relu, mode, eps.data_ptr(), 0, 0, 0, 1)  # fmt: skip
        assert_same_non_finite(y, y_ref)
