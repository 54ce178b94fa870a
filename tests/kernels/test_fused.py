"""mp_hub.kernels.fused: the fused site kernels against the eager path (outputs, running statistics, gradients,
noise, fallbacks), their builds, profiler ranges and pass timer, and the backend settings."""

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
from _builders import make_phi
from safetensors.torch import load_file

from mp_hub import ConfigError, InvalidInputError, MetaPerturb, MetaPerturbConfig, PerturbSite, kernels
from mp_hub.kernels import fused, passes


@pytest.fixture(scope="module", autouse=True)
def _needs_kernels():
    if not kernels.fused_available():
        from mp_hub.kernels.build import load_error

        pytest.skip(f"fused kernels unavailable here: {load_error()}")


# the padded-layout forward mp_forward: test-only, built with the shipped kernels into one library
PADDED_REFERENCE = Path(__file__).parent / "padded_reference.c"


def reference_kernels():
    return fused.build.load_extended(PADDED_REFERENCE, {"mp_forward": "mp_forward_stacked"})


def site_pair(phi, channels, **kwargs):
    """The same site twice: fused in float32, eager in float64 (its own float64 copy of φ)."""
    phi64 = copy.deepcopy(phi).double()
    fast = PerturbSite(phi, channels, spatial_norm=8, backend="fused", **kwargs)
    ref = PerturbSite(phi64, channels, spatial_norm=8, backend="eager", **kwargs).double()
    return fast, ref


def close(a, b, tol=2e-5):
    scale = max(1.0, b.abs().max().item())
    assert (a.double() - b).abs().max().item() <= tol * scale, (a.double() - b).abs().max().item()


# odd and non-square planes, single rows and columns: the edges of both kernel layouts (padded and stacked)
SHAPES = [(3, 5, 7, 6), (4, 16, 8, 8), (2, 3, 1, 1), (1, 4, 5, 5), (2, 3, 5, 1), (2, 2, 1, 9), (2, 2, 3, 17)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mode", ["eps", "mean"])
@pytest.mark.parametrize("trainable_phi", [True, False])
@pytest.mark.parametrize("fused_relu", [False, True])
def test_fused_matches_eager_outputs_stats_and_gradients(shape, training, mode, trainable_phi, fused_relu):
    phi = make_phi()
    fast, ref = site_pair(
        phi, shape[1], noise_coeff=0.7, clip_value=1.5, inference_mode="mc" if mode == "eps" else mode
    )
    fast.fused_relu = ref.fused_relu = fused_relu
    for site in (fast, ref):
        site.running_mean.uniform_(0.0, 0.5)
        site.running_var.uniform_(0.0, 0.5)
    ref.load_state_dict({k: v.double() for k, v in fast.state_dict().items()})
    for p in (*phi.parameters(), *ref.phi.parameters()):
        p.requires_grad_(trainable_phi)
    fast.train(training), ref.train(training)
    torch.manual_seed(1)
    x = (2 * torch.randn(shape)).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    eps = torch.randn(shape) if mode == "eps" else None
    y = fast(x, noise=eps)
    y_ref = ref(x64, noise=None if eps is None else eps.double())
    close(y, y_ref)
    if fused_relu:  # the ReLU is applied, and there is something for it to do
        assert (y >= 0).all() and (y == 0).float().mean() > 0.1
    close(fast.running_mean, ref.running_mean, 1e-6)
    close(fast.running_var, ref.running_var, 1e-6)
    grad_y = torch.randn(shape)
    y.backward(grad_y)
    y_ref.backward(grad_y.double())
    close(x.grad, x64.grad, 1e-4)
    for (name, p), p64 in zip(phi.named_parameters(), ref.phi.parameters()):
        if p64.grad is None:  # frozen φ, or the scale kernels when the running statistics were used
            assert p.grad is None, name
        else:
            close(p.grad, p64.grad, 1e-4)


def test_frozen_phi_with_other_h_dim_and_fused_relu_trains_from_x():
    """The scale features keep their ReLU masks as bits only for h = 4: with another h their backward recomputes
    them from x, here with frozen φ and a fused ReLU."""
    torch.manual_seed(0)
    phi = MetaPerturb(MetaPerturbConfig(h_dim=8))
    with torch.no_grad():
        for p in phi.parameters():
            p.mul_(25).requires_grad_(False)
    fast, ref = site_pair(phi, 5, noise_coeff=0.7, clip_value=1.5, inference_mode="mean")
    fast.fused_relu = ref.fused_relu = True
    x = (2 * torch.randn(3, 5, 7, 6)).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    y, y_ref = fast(x), ref(x64)
    grad_y = torch.randn(3, 5, 7, 6)
    y.backward(grad_y)
    y_ref.backward(grad_y.double())
    close(x.grad, x64.grad, 1e-4)


def _forward_both_layouts(lib, reference, phi, x, mode, eps, relu):
    """y of the reference's mp_forward (the padded layout) and of the shipped `lib`'s mp_forward_stacked (what the
    sites run), on the same arguments."""
    l1, g1, l2, g2 = (k.detach().contiguous() for k in fused.phi_params(phi)[:4])
    batch, channels, height, width = x.shape
    scale = torch.rand(channels) + 0.5
    noise = None if eps is None else eps.data_ptr()
    common = (batch, channels, height, width, l1.data_ptr(), g1.data_ptr(), l2.data_ptr(), g2.data_ptr(),
              scale.data_ptr(), 0.7, 1.5, relu, mode, noise, 11, 22, 0, 2)  # fmt: skip
    padded, stacked = torch.empty_like(x), torch.empty_like(x)
    reference.mp_forward(x.data_ptr(), padded.data_ptr(), *common)
    lib.mp_forward_stacked(x.data_ptr(), stacked.data_ptr(), *common)
    return padded, stacked


@pytest.mark.parametrize("relu", [0, 1])
@pytest.mark.parametrize("mode", [fused.MODE_EPS, fused.MODE_RNG, fused.MODE_MEAN])
def test_the_stacked_forward_is_bitwise_the_padded_one(mode, relu):
    """The sites' forward runs on the stacked layout; it must be the padded one's function to the bit."""
    lib, reference, phi = fused.build.load(), reference_kernels(), make_phi()
    torch.manual_seed(2)
    for shape in SHAPES:
        x = 2 * torch.randn(shape)
        eps = torch.randn(shape) if mode == fused.MODE_EPS else None
        padded, stacked = _forward_both_layouts(lib, reference, phi, x, mode, eps, relu)
        assert torch.equal(padded, stacked), shape


def test_a_non_finite_value_does_not_leak_across_the_row_edge():
    """The stacked layout's masked taps read the neighbouring row's last/first value; masking must not turn an
    inf there into a NaN (0 · inf) where the eager path has a finite output."""
    phi = make_phi()
    fast, ref = site_pair(phi, 3, clip_value=1.5, inference_mode="mean")
    for site in (fast, ref):
        site.eval()
    ref.load_state_dict({k: v.double() for k, v in fast.state_dict().items()})
    x = torch.randn(2, 3, 6, 5)
    x[0, 1, 2, 4] = float("inf")  # last column: row 3's first column is its neighbour only in flat memory
    x[1, 2, 3, 0] = -float("inf")  # first column: row 2's last column likewise
    y, y_ref = fast(x), ref(x.double())
    # where the eager output is finite the fused one must be too, and agree (elsewhere the two may differ in
    # which non-finite value or 0 they give: the kernels' ReLU maps a nan to 0, torch's keeps it)
    finite = torch.isfinite(y_ref)
    assert finite.float().mean() > 0.5
    assert torch.isfinite(y[finite]).all()
    close(y[finite], y_ref[finite])


def test_the_generated_noise_path_equals_passing_the_same_draws():
    phi = make_phi()
    fast, _ = site_pair(phi, 6, clip_value=2.0)
    twin = PerturbSite(phi, 6, spatial_norm=8, backend="fused", clip_value=2.0)
    x = torch.randn(4, 6, 9, 7, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    torch.manual_seed(5)
    key = int(torch.randint(0, 2**62, ()))
    keys = (key & 0x7FFFFFFF, key >> 31)
    torch.manual_seed(5)
    y = fast.train()(x)
    y2 = twin.train()(x2, noise=fused.normal_draws(tuple(x.shape), keys))
    assert torch.equal(y, y2)
    g = torch.randn_like(y)
    y.backward(g), y2.backward(g)
    close(x.grad, x2.grad, 1e-6)
    torch.manual_seed(5)
    assert torch.equal(fast(x), y)  # torch.manual_seed reproduces the fused draws


def test_generated_noise_is_standard_normal_and_independent():
    eps = fused.normal_draws((16, 16, 64, 64), (12345, 678)).flatten().double()
    n = eps.numel()
    assert abs(eps.mean().item()) < 5 / n**0.5
    assert abs(eps.var().item() - 1) < 5 * (2 / n) ** 0.5
    assert abs((eps**4).mean().item() - 3) < 5 * (96 / n) ** 0.5
    bins = torch.tensor([-9.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 9.0], dtype=torch.float64)
    expected = torch.diff(0.5 * (1 + torch.erf(bins / 2**0.5)))
    observed = torch.histogram(eps, bins).hist / n
    z_scores = (observed - expected) / (expected * (1 - expected) / n) ** 0.5
    assert z_scores.abs().max().item() < 4.5, z_scores
    other = fused.normal_draws((16, 16, 64, 64), (12345, 679)).flatten().double()
    assert abs(torch.corrcoef(torch.stack([eps, other]))[0, 1].item()) < 5 / n**0.5
    assert abs(torch.corrcoef(torch.stack([eps[:-1], eps[1:]]))[0, 1].item()) < 5 / n**0.5


def test_an_odd_plane_draws_the_first_values_of_the_plane_one_longer():
    # a plane of n draws pairs j and j + (n + 1) // 2; with n odd the last pair's second draw falls outside it, so
    # the plane is the one of n + 1 cut short (an off-by-one at the tail, written or dropped, breaks this)
    for n in (1, 3, 17, 63, 1023):
        odd, even = (fused.normal_draws((2, 3, 1, size), (7, 8)) for size in (n, n + 1))
        assert torch.equal(odd, even[..., :n]), n
        assert torch.isfinite(odd).all()


def test_the_kernels_build_with_native_flags_on_x86_64_gcc():
    import platform
    import shutil

    from mp_hub.kernels.build import _FLAG_SETS, build_info, cpu_flags

    info = build_info()
    assert info and info["path"].endswith(".so")
    if platform.machine() == "x86_64" and shutil.which("gcc"):  # a fallback flag set means a source bug
        assert info["flags"] == _FLAG_SETS[0]
        # a CPU with AVX-512, or AVX2 and FMA, keeps the features' ReLU masks as bits (masks.c has both paths)
        flags = set(cpu_flags() or ())
        if flags:
            assert info["bit_masks"] == ("avx512f" in flags or {"avx2", "fma"} <= flags)


def test_the_portable_build_matches_eager_too(tmp_path, monkeypatch):
    """Without -march=native (no AVX-512: no bit masks, the integer-hash generator) the kernels stay exact."""
    import shutil

    from mp_hub.kernels import build

    cc = build._compiler()
    if cc is None or shutil.which(cc) is None:
        pytest.skip("no C compiler")
    path = tmp_path / "portable.so"
    try:
        build._compile(cc, ["-fopenmp"], path)
    except RuntimeError:  # a compiler without OpenMP
        build._compile(cc, ["-fopenmp-simd"], path)
    monkeypatch.setitem(build._state, "lib", build._bind(path))
    assert not build._state["lib"].mp_has_masks()
    test_fused_matches_eager_outputs_stats_and_gradients((3, 5, 7, 6), True, "eps", True, True)
    test_fused_matches_eager_outputs_stats_and_gradients((3, 5, 7, 6), False, "mean", False, False)
    test_fused_matches_eager_outputs_stats_and_gradients((3, 5, 7, 6), True, "eps", False, True)
    test_the_generated_noise_path_equals_passing_the_same_draws()


def test_no_grad_and_grad_paths_agree_and_mean_mode_is_deterministic():
    phi = make_phi()
    site = PerturbSite(phi, 8, spatial_norm=8, backend="fused", inference_mode="mean").eval()
    x = torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        a = site(x)
    b = site(x.requires_grad_())
    assert torch.equal(a, b.detach())
    assert torch.equal(site(x, noise=torch.randn_like(x)), b)  # "mean" ignores a given noise, like eager
    # frozen φ and a fused ReLU, with and without grad: bitwise the same output
    site.fused_relu = True
    for p in phi.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        a = site(x)
    b = site(x)
    assert b.grad_fn is not None and torch.equal(a, b.detach())


def test_every_kernel_pass_is_a_named_range_under_torch_profiler():
    """A trace shows where a fused site's time goes: each kernel call is an `mp_hub::<pass>` range, once per call."""
    from torch.profiler import ProfilerActivity, profile

    def ranges(run) -> list[str]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        return sorted(e.name for e in prof.events() if e.name.startswith("mp_hub::"))

    phi = make_phi()
    for p in phi.parameters():  # frozen φ: the backward still reaches x through the batch statistics
        p.requires_grad_(False)
    site = PerturbSite(phi, 8, spatial_norm=8, backend="fused").train()
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    assert ranges(lambda: site(x).sum().backward()) == sorted(f"mp_hub::{name}" for name in fused.PASSES)
    site.eval().set_inference_mode("mean")  # running statistics: no scale features, no backward
    with torch.no_grad():
        assert ranges(lambda: site(x)) == ["mp_hub::forward", "mp_hub::scale"]


def test_pass_timer_adds_up_each_kernel_pass_and_only_while_open():
    phi = make_phi()
    site = PerturbSite(phi, 8, spatial_norm=8, backend="fused").train()
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    with fused.pass_timer() as seconds:
        site(x).sum().backward()
        after_one = dict(seconds)
        site(x).sum().backward()
        with pytest.raises(RuntimeError, match="already open"), fused.pass_timer():
            pass
    assert list(seconds) == list(fused.PASSES) and all(after_one[name] > 0 for name in fused.PASSES)
    assert all(seconds[name] > after_one[name] for name in fused.PASSES)  # added up, call after call
    final = dict(seconds)
    site(x).sum().backward()  # closed: nothing more is added
    assert seconds == final and not passes.pass_timer_open()


def test_fused_backend_falls_back_to_eager_with_one_warning(caplog):
    fused._warned.clear()
    phi = make_phi().double()
    site = PerturbSite(phi, 4, spatial_norm=8, backend="fused").double().eval()
    x, eps = torch.randn(2, 4, 5, 5, dtype=torch.float64), torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="mp_hub.kernels.fused"):
        y = site(x, noise=eps)
        site(x, noise=eps)
    assert len([r for r in caplog.records if "falls back" in r.message]) == 1
    site.set_backend("eager")
    assert torch.equal(y, site(x, noise=eps))


def test_backend_settings_are_checked():
    with pytest.raises(ConfigError, match="backend"):
        PerturbSite(MetaPerturb(), 4, spatial_norm=8, backend="cuda")
    with pytest.raises(ConfigError, match="backend"):
        kernels.set_default_backend("fast")
    previous = kernels.get_default_backend()
    try:
        kernels.set_default_backend("eager")
        site = PerturbSite(MetaPerturb(), 4, spatial_norm=8)
        assert fused.kernels_for(site, torch.randn(2, 4, 3, 3), None) is None
    finally:
        kernels.set_default_backend(previous)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_in_training_raises_on_the_fused_path(bad):
    x = torch.randn(2, 4, 8, 8)
    x[1, 2, 3, 4] = bad
    with pytest.raises(InvalidInputError, match="non-finite"):
        PerturbSite(make_phi(), 4, spatial_norm=8, backend="fused").train()(x)


def test_official_vectors_through_the_fused_path(reference_dir):
    phi = MetaPerturb.from_official(reference_dir / "perturb_750.pth")
    vectors = load_file(str(reference_dir / "official_vectors.safetensors"))
    for case in json.loads((reference_dir / "official_vectors.json").read_text())["cases"]:
        name, x = case["name"], vectors[case["name"] + ".input"]
        site = PerturbSite(phi, x.shape[1], spatial_norm=case["spatial_norm_factor"],
                           channel_norm=case["channel_norm_factor"], noise_coeff=case["noise_coeff"],
                           clip_value=case["clipval"], momentum=case["momentum"], backend="fused")  # fmt: skip
        site.running_mean.copy_(vectors[name + ".running_mean_before"])
        site.running_var.copy_(vectors[name + ".running_var_before"])
        site.train(case["training"])
        assert fused.kernels_for(site, x, None) is not None
        y = site(x, noise=vectors[name + ".eps"])
        assert (y - vectors[name + ".output"]).abs().max() <= 1e-5, name
        assert (site.running_mean - vectors[name + ".running_mean_after"]).abs().max() <= 1e-5, name
        assert (site.running_var - vectors[name + ".running_var_after"]).abs().max() <= 1e-5, name
