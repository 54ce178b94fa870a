"""mp_hub.functional: E[softplus(μ + ε)], ε ~ N(0, 1), against quadrature and Monte Carlo, its cached table and half
inputs; the scale's inputs built on the statistics' device."""

import pytest
import torch
import torch.nn.functional as F
from _builders import RecordedOps

from mp_hub import functional as MF


def test_expected_softplus_closed_form_against_quadrature():
    mu = torch.linspace(-10, 10, 2001, dtype=torch.float64)
    e = torch.linspace(-12, 12, 9601, dtype=torch.float64)  # trapezoid on a Gaussian integrand: error << 1e-12
    pdf = torch.exp(-(e**2) / 2) / (2 * torch.pi) ** 0.5
    ref = torch.cat([torch.trapezoid(F.softplus(m[:, None] + e) * pdf, e, dim=1) for m in mu.split(250)])
    slope = torch.cat([torch.trapezoid(torch.sigmoid(m[:, None] + e) * pdf, e, dim=1) for m in mu.split(250)])
    assert (MF.expected_softplus(mu) - ref).abs().max().item() < 2e-8
    assert (MF.expected_softplus(mu.float()).double() - ref).abs().max().item() < 2e-6
    mu_grad = mu.clone().requires_grad_()
    MF.expected_softplus(mu_grad).sum().backward()
    assert (mu_grad.grad - slope).abs().max().item() < 1e-6


def test_expected_softplus_cached_table_serves_inference_mode_and_autograd_alike():
    """The coefficient table is built once per dtype and device: first built under inference_mode, it must still
    serve a differentiable call (and the reverse)."""
    MF._esp_table.cache_clear()
    with torch.inference_mode():
        first = MF.expected_softplus(torch.linspace(-3, 3, 7))
    mu = torch.linspace(-3, 3, 7, requires_grad=True)
    MF.expected_softplus(mu).sum().backward()
    assert torch.equal(first, MF.expected_softplus(mu.detach())) and torch.isfinite(mu.grad).all()
    assert MF._esp_table.cache_info().misses == 1


def test_expected_softplus_matches_monte_carlo():
    mu = torch.linspace(-6, 6, 25)
    eps = torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0))
    mc = torch.nn.functional.softplus(mu + eps).mean(0)
    assert (MF.expected_softplus(mu) - mc).abs().max() < 5e-3


def test_scale_inputs_builds_no_tensor_from_host_data():
    """The size terms C/C₀ and H/H₀ are filled on the statistics' device: no list turned into a tensor (on a GPU, a
    host-to-device copy on every call), and the rows are those of the former expand of a two-element tensor."""
    mean, var = torch.rand(5, 4), torch.rand(5, 4)
    with RecordedOps() as ops:
        rows = MF.scale_inputs(mean, var, height=8, channel_norm=16.0, spatial_norm=32.0)
    assert "aten.lift_fresh.default" not in ops.names
    expected = torch.cat([mean, var, mean.new_tensor([5 / 16.0, 8 / 32.0]).expand(5, 2)], dim=-1)
    assert torch.equal(rows, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_expected_softplus_evaluates_half_inputs_in_float32(dtype):
    mu = torch.linspace(-8, 8, 401).to(dtype)
    out = MF.expected_softplus(mu)
    assert out.dtype == dtype and torch.equal(out, MF.expected_softplus(mu.float()).to(dtype))
