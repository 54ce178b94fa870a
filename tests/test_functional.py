"""mp_hub.functional: E[softplus(μ + ε)], ε ~ N(0, 1), against quadrature and Monte Carlo, and its cached table."""

import torch
import torch.nn.functional as F

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
