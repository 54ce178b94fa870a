"""Parity with the authors' `Perturb` on every clone: PerturbSite (both backends) against the committed fixtures
of a transcription of their module (tests/fixtures/make_parity_fixtures.py), and that transcription against the
vectors of their own run where ../shared exists."""

import copy
import json
from pathlib import Path

import pytest
import torch
from _builders import load_script
from safetensors.torch import load_file

from mp_hub import MetaPerturb, PerturbSite, kernels
from mp_hub.convert import OFFICIAL_KEY_MAP, convert_official_state
from mp_hub.kernels.fused import kernels_for

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# the fixture script lives beside its data, not in an importable package: load it by path
reference = load_script(FIXTURES / "make_parity_fixtures.py", "make_parity_fixtures")

VECTORS = load_file(str(reference.VECTORS))
MANIFEST = json.loads(reference.MANIFEST.read_text())
CASES = {case["name"]: case for case in MANIFEST["cases"]}
OFFICIAL_CASES = ["resnet20_stage1_train", "resnet20_stage2_train", "resnet20_stage3_anneal", "resnet20_stage3_eval",
                  "resnet18_84px_train", "clip_small"]  # fmt: skip
TOL = reference.FLOAT32_TOL  # float32 rounding of the site against the float64 transcription, relative to the largest


def close(actual, expected, what, tol=TOL):
    gap = (actual.double() - expected.double()).abs().max().item()
    bound = tol * max(1.0, expected.abs().max().item())
    assert gap <= bound, f"{what}: max abs difference {gap:.3e} > {bound:.3e}"


def case_tensors(name):
    prefix = f"{name}."
    return {key[len(prefix) :]: value for key, value in VECTORS.items() if key.startswith(prefix)}


def phi_from_fixture(tensors):
    phi = MetaPerturb()
    official = {k[4:]: v for k, v in tensors.items() if k.startswith("phi.")}
    phi.load_state_dict(convert_official_state(official, phi.state_dict()))
    return phi


def test_fixtures_hold_every_case_with_the_same_variety_as_the_authors_vectors():
    assert sorted(CASES) == sorted(case["name"] for case in reference.CASES)
    cases = CASES.values()
    assert {c["training"] for c in cases} == {True, False}
    assert any(c["noise_coeff"] < 1 for c in cases) and any(c["clipval"] < 100 for c in cases)
    assert len({c["channel_norm_factor"] for c in cases}) > 1 and len({c["spatial_norm_factor"] for c in cases}) > 1
    for name, case in CASES.items():
        tensors = case_tensors(name)
        assert list(tensors["input"].shape) == case["shape"]
        assert {f"grad.{key}" for key in OFFICIAL_KEY_MAP} | {"grad.input"} <= set(tensors)
        if case["clipval"] < 100:  # the clip is exercised, not just configured
            assert (tensors["output"] >= case["clipval"]).any()


def test_fixtures_are_what_the_generator_writes():
    tensors, manifest = reference.build()
    assert manifest == MANIFEST
    assert sorted(tensors) == sorted(VECTORS)
    for key, value in tensors.items():
        close(value, VECTORS[key], key, tol=1e-6)


@pytest.mark.parametrize("backend", ["eager", "fused"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_site_matches_the_authors_perturb(name, backend):
    case, tensors = CASES[name], case_tensors(name)
    phi = phi_from_fixture(tensors)
    x = tensors["input"].clone().requires_grad_(True)
    eps = tensors["eps"]
    site = PerturbSite(
        phi,
        x.shape[1],
        spatial_norm=case["spatial_norm_factor"],
        channel_norm=case["channel_norm_factor"],
        noise_coeff=case["noise_coeff"],
        clip_value=case["clipval"],
        momentum=case["momentum"],
        backend=backend,
    )
    site.running_mean.copy_(tensors["running_mean_before"])
    site.running_var.copy_(tensors["running_var_before"])
    site.train(case["training"])
    if backend == "fused" and kernels.fused_available():  # where the kernels build, this case must run on them
        assert kernels_for(site, x, eps) is not None
    with torch.no_grad():
        close(phi.noise_generator(x), tensors["alpha"], "μ")
        close(copy.deepcopy(site).scale(x), tensors["scale"], "scale")  # a copy: its stats stay as before
    y = site(x, noise=eps)
    close(y, tensors["output"], "output")
    close(site.running_mean, tensors["running_mean_after"], "running_mean")
    close(site.running_var, tensors["running_var_after"], "running_var")
    (y * tensors["g"]).sum().backward()
    close(x.grad, tensors["grad.input"], "grad wrt x")
    params = dict(phi.named_parameters())
    for official, ours in OFFICIAL_KEY_MAP.items():
        grad = params[ours].grad
        close(torch.zeros_like(params[ours]) if grad is None else grad, tensors[f"grad.{official}"], f"grad {official}")


@pytest.fixture(scope="module")
def official(reference_dir):
    ref = reference_dir
    cases = {c["name"]: c for c in json.loads((ref / "official_vectors.json").read_text())["cases"]}
    weights = torch.load(ref / "perturb_750.pth", map_location="cpu", weights_only=True)
    return weights, load_file(str(ref / "official_vectors.safetensors")), cases


@pytest.mark.parametrize("name", OFFICIAL_CASES)
def test_the_transcription_reproduces_the_authors_run(official, name):
    weights, vectors, cases = official
    case = cases[name]
    assert case["momentum"] == reference.MOMENTUM
    inputs = [vectors[f"{name}.{key}"] for key in ("input", "eps", "running_mean_before", "running_var_before")]
    result = reference.run_reference(weights, case, *inputs, dtype=torch.float32)
    for key in ("alpha", "scale", "output", "running_mean_after", "running_var_after"):
        close(result[key], vectors[f"{name}.{key}"], key, tol=1e-6)
