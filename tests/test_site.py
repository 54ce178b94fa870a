"""mp_hub.site: PerturbSite's parity with the authors' code, state semantics, bad inputs and settings, κ written
between a forward and its backward, and a device path with no host sync."""

import json

import pytest
import torch
from _builders import RecordedOps
from safetensors.torch import load_file

from mp_hub import ConfigError, InvalidInputError, MetaPerturb, PerturbSite

CASES = ["resnet20_stage1_train", "resnet20_stage2_train", "resnet20_stage3_anneal", "resnet20_stage3_eval",
         "resnet18_84px_train", "clip_small"]  # fmt: skip


@pytest.fixture(scope="module")
def official(reference_dir):
    ref = reference_dir
    cases = {c["name"]: c for c in json.loads((ref / "official_vectors.json").read_text())["cases"]}
    vectors = load_file(str(ref / "official_vectors.safetensors"))
    return MetaPerturb.from_official(ref / "perturb_750.pth"), vectors, cases


def test_the_reference_lists_exactly_the_six_cases(official):
    assert sorted(official[2]) == sorted(CASES)


@pytest.mark.parametrize("name", CASES)
def test_parity_with_the_authors_perturb(official, name):
    phi, vectors, cases = official
    case = cases[name]
    x = vectors[f"{name}.input"]
    site = PerturbSite(
        phi,
        x.shape[1],
        spatial_norm=case["spatial_norm_factor"],
        channel_norm=case["channel_norm_factor"],
        noise_coeff=case["noise_coeff"],
        clip_value=case["clipval"],
        momentum=case["momentum"],
    )
    site.running_mean.copy_(vectors[f"{name}.running_mean_before"])
    site.running_var.copy_(vectors[f"{name}.running_var_before"])
    site.train(case["training"])
    assert list(x.shape) == case["shape"]
    with torch.no_grad():
        mu = phi.noise_generator(x)
        scale = PerturbSite.scale(_frozen_copy(site), x)  # s from the *before* statistics, like the reference
        y = site(x, noise=vectors[f"{name}.eps"])
    tol = 1e-5
    assert (mu - vectors[f"{name}.alpha"]).abs().max() <= tol
    assert (scale - vectors[f"{name}.scale"]).abs().max() <= tol
    assert (y - vectors[f"{name}.output"]).abs().max() <= tol
    assert (site.running_mean - vectors[f"{name}.running_mean_after"]).abs().max() <= tol
    assert (site.running_var - vectors[f"{name}.running_var_after"]).abs().max() <= tol
    if not case["training"]:
        assert torch.equal(site.running_mean, vectors[f"{name}.running_mean_before"])


def _frozen_copy(site):
    import copy

    clone = copy.copy(site)
    clone._buffers = {k: v.clone() for k, v in site._buffers.items()}
    return clone


def make_site(channels=4, **kwargs):
    torch.manual_seed(0)
    return PerturbSite(MetaPerturb(), channels, spatial_norm=8, **kwargs)


def test_training_updates_running_stats_and_eval_does_not():
    site = make_site()
    x = torch.randn(3, 4, 8, 8)
    site.train()
    site(x)
    after_train = site.running_mean.clone()
    assert not torch.equal(after_train, torch.zeros_like(after_train))
    site.eval()
    site(x)
    assert torch.equal(site.running_mean, after_train)


def test_batch_of_one_in_training_uses_running_stats_without_nan():
    site = make_site().train()
    before = (site.running_mean.clone(), site.running_var.clone())
    y = site(torch.randn(1, 4, 8, 8))
    assert torch.isfinite(y).all()
    assert torch.equal(site.running_mean, before[0]) and torch.equal(site.running_var, before[1])


def test_noise_argument_makes_calls_reproducible_and_modes_behave():
    site = make_site().eval()
    x = torch.randn(2, 4, 8, 8)
    eps = torch.randn_like(x)
    assert torch.equal(site(x, noise=eps), site(x, noise=eps))
    assert not torch.equal(site(x), site(x))  # "mc" samples in eval too, like the authors
    site.set_inference_mode("mean")
    assert torch.equal(site(x), site(x))
    site.set_inference_mode("off")
    assert site(x) is x


def test_mean_mode_approximates_the_mc_average_of_the_site_output():
    site = make_site(channels=4).eval()
    with torch.no_grad():
        for p in site.phi.parameters():
            p.mul_(50)  # make μ spread over a few units so the test is not trivial
        x = torch.randn(2, 4, 8, 8)
        site.set_inference_mode("mean")
        mean_out = site(x)
        site.set_inference_mode("mc")
        mc = torch.stack([site(x) for _ in range(4000)]).mean(0)
    assert (mean_out - mc).abs().max() < 0.05 * x.abs().max()


def test_noise_coeff_zero_is_identity_below_the_clip():
    site = make_site(noise_coeff=0.0).train()
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(site(x), x)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.randn(4, 8, 8), "shape"),
        (torch.ones(2, 4, 8, 8, dtype=torch.long), "floating"),
        (torch.randn(2, 5, 8, 8), "4 channels"),
    ],
)
def test_bad_inputs_raise_typed_errors(x, match):
    with pytest.raises(InvalidInputError, match=match):
        make_site()(x)


def test_non_finite_input_in_training_raises():
    x = torch.randn(2, 4, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="non-finite"):
        make_site().train()(x)


def test_noise_of_the_wrong_shape_raises():
    with pytest.raises(InvalidInputError, match="noise"):
        make_site()(torch.randn(2, 4, 8, 8), noise=torch.randn(2, 4, 8, 7))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(spatial_norm=None), "spatial_norm"),
        (dict(spatial_norm=8, inference_mode="fast"), "inference_mode"),
        (dict(spatial_norm=8, noise_coeff=1.5), "noise_coeff"),
        (dict(spatial_norm=8, channel_norm=0), "channel_norm"),
    ],
)
def test_bad_site_settings_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PerturbSite(MetaPerturb(), 4, **kwargs)


def test_phi_is_shared_not_a_submodule_of_the_site():
    phi = MetaPerturb()
    site = PerturbSite(phi, 4, spatial_norm=8)
    assert site.phi is phi
    assert set(site.state_dict()) == {"running_mean", "running_var", "noise_coeff"}
    assert list(site.parameters()) == []


def test_gradients_reach_x_and_phi():
    site = make_site().train()
    x = torch.randn(3, 4, 8, 8, requires_grad=True)
    site(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in site.phi.parameters())


@pytest.mark.parametrize("backend", ["eager", "fused"])
def test_writing_noise_coeff_between_forward_and_backward_leaves_the_backward_as_it_was(backend):
    """κ is not saved for backward as the buffer: `set_noise_coeff` (or DDP's buffer broadcast) between a forward
    and its backward neither breaks the backward nor changes its gradients."""
    grads = []
    for write_between in (False, True):
        site = make_site(noise_coeff=0.7, backend=backend).train()
        x = torch.randn(3, 4, 8, 8, requires_grad=True)
        torch.manual_seed(1)
        y = site(x)
        if write_between:
            site.set_noise_coeff(0.2)
        y.sum().backward()
        grads.append((x.grad, [p.grad for p in site.phi.parameters()]))
    (gx, gphi), (gx_written, gphi_written) = grads
    assert torch.equal(gx, gx_written) and all(torch.equal(a, b) for a, b in zip(gphi, gphi_written))


@pytest.mark.parametrize("mode", ["mc", "mean"])
@pytest.mark.parametrize("training", [True, False])
def test_the_device_path_reads_nothing_back_to_the_host(mode, training):
    """Off the CPU (here the meta device, which runs torch's device-generic code without data) a site's forward
    and backward make no host read of a device value (a sync on a GPU) and no tensor from host data (a host-to-device
    copy); the non-finite check of a training batch is an asynchronous assert."""
    phi = MetaPerturb().to("meta")
    site = PerturbSite(phi, 4, spatial_norm=8, inference_mode=mode).to("meta").train(training)
    x = torch.randn(3, 4, 6, 6, device="meta", requires_grad=True)
    site(x)  # the first call builds the cached E[softplus] table on the device
    with RecordedOps() as ops:
        site(x).sum().backward()
    host = {"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.item.default",
            "aten.lift_fresh.default", "aten.lift_fresh_copy.default"}  # fmt: skip
    assert not ops.names & host, ops.names & host
    assert ("aten._assert_async.msg" in ops.names) == training
