"""benchmarks/noise_level.py: a site's figures read what it does (the identity has multiplier 1 and no spread, the
clip holds large inputs, MC noise spreads), every site of a model is seen in forward order, and the summary
averages a stage's sites, then the seeds."""

import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import noise_level
import pytest
import torch

import mp_hub
from mp_hub.models import model_from_type
from mp_hub.site import PerturbSite


def site(mode: str) -> PerturbSite:
    made = PerturbSite(mp_hub.MetaPerturb(), channels=4, spatial_norm=8)
    made.eval()
    made.set_inference_mode(mode)
    return made


def test_the_identity_has_multiplier_one_and_no_spread_and_noise_spreads():
    x = torch.rand(2, 4, 8, 8) + 0.1
    off = noise_level.site_figures(site("off"), x, draws=4)
    assert off["mean_multiplier"] == pytest.approx(1.0) and off["coefficient_of_variation"] == 0.0
    assert off["input_at_clip"] == 0.0 and off["output_at_clip"] == 0.0 and off["channels"] == 4
    assert off["mean_input"] == pytest.approx(x.mean().item())
    assert off["output_zeroed"] == 0.0
    noisy = noise_level.site_figures(site("mc"), x, draws=4)
    assert noisy["coefficient_of_variation"] > 0.05  # z = softplus(μ + ε) with μ ≈ 0: a wide spread
    assert "mean_multiplier" not in noise_level.site_figures(site("mc"), x, draws=0)  # inputs only


def test_inputs_above_the_clip_are_held_there_and_only_positive_ones_count():
    x = torch.full((1, 4, 8, 8), 1000.0)
    x[:, :, :4] = -1.0  # half the elements negative: no multiplier read there
    clipping = site("mc")
    clipping.set_noise_coeff(0.0)  # multiplier 1, then the clip: y = min(x, 100)
    figures = noise_level.site_figures(clipping, x, draws=2)
    assert figures["input_at_clip"] == 1.0 and figures["output_at_clip"] == 1.0
    assert figures["mean_input"] == 1000.0 and figures["mean_multiplier"] == pytest.approx(0.1)


def test_every_site_of_a_model_is_read_in_forward_order():
    model = model_from_type("cifar_resnet20", num_labels=10).eval()
    mp_hub.attach(model, mp_hub.MetaPerturb(), spatial_norm=32).set_inference_mode("off")
    inputs = noise_level.site_inputs(model, torch.randn(2, 3, 32, 32), seed=0)
    assert [x.shape[1] for _, x in inputs] == [16] * 3 + [32] * 3 + [64] * 3
    assert all(not site._forward_hooks for site, _ in inputs)  # the hooks are gone afterwards


def test_the_summary_averages_a_stages_sites_then_the_seeds():
    def run(label, seed, values):
        sites = [{"channels": c, "mean_input": v, "input_at_clip": 0.0} for c, v in zip((16, 16, 32), values)]
        return {"regularizer": label, "seed": seed, "sites": sites}

    rows = [run("none", 0, (1.0, 3.0, 10.0)), run("none", 1, (3.0, 5.0, 20.0)), run("dropblock", 0, (0, 0, 1))]
    summary = noise_level.stage_summary(rows)
    assert [(e["regularizer"], e["channels"], e["seeds"], e["mean_input"]) for e in summary] == [
        ("none", 16, 2, 3.0), ("none", 32, 2, 15.0), ("dropblock", 16, 1, 0.0), ("dropblock", 32, 1, 1.0)]  # fmt: skip
    assert "| none | 32 | 2 | 15 | 0 % | — | — | — |" in noise_level.summary_markdown(summary)


def test_each_configuration_has_its_own_results_file():
    args = Namespace(target="mnist", images=200, draws=16, seeds=[0, 1, 2], weight_decay=None)
    no_phi = [(Path("mnist-resnet20-none-none-s0"), {"regularizer": "none", "phi": "none"})]
    assert noise_level.results_file_name(args, {2000}, no_phi) == "noise_level-mnist-train2000-n200-draws16.json"
    assert noise_level.results_file_name(args, {1000}, no_phi) == "noise_level-mnist-train1000-n200-draws16.json"
    one_seed = Namespace(**{**vars(args), "seeds": [0]})
    assert noise_level.results_file_name(one_seed, {1000, 2000}, no_phi).endswith(
        "train1000+2000-n200-draws16-seeds0.json"
    )
    decayed = Namespace(**{**vars(one_seed), "weight_decay": 5e-4})  # a transfer_gain --weight_decay ablation's runs
    assert noise_level.results_file_name(decayed, {2000}, no_phi).endswith(
        "train2000-n200-draws16-seeds0-wd0.0005.json"
    )
    # runs of other φs in the work dir: another file (the φ part is confidence.phis_setting's, tested there)
    with_phi = [*no_phi, (Path("x"), {"regularizer": "metaperturb", "phi": "official"})]
    assert noise_level.results_file_name(args, {2000}, with_phi).startswith(
        "noise_level-mnist-train2000-n200-draws16-phi1_"
    )


def test_a_switched_off_feature_counts_as_zeroed_and_not_in_the_spread():
    x = torch.rand(1, 4, 8, 8) + 0.1
    off = site("mc")
    with torch.no_grad():
        off.phi.noise_generator.layer1.identity_kernel.fill_(1.0)  # relu(CEO1(x)) > 0 for x > 0
        off.phi.noise_generator.layer2.identity_kernel.fill_(-1e4)  # then μ very negative: softplus(μ + ε) = 0
    figures = noise_level.site_figures(off, x, draws=3)
    assert figures["output_zeroed"] == 1.0 and figures["mean_multiplier"] == 0.0
    assert figures["coefficient_of_variation"] != figures["coefficient_of_variation"]  # nan: no element left


def test_more_images_than_the_target_holds_is_refused(tmp_path):
    (tmp_path / "decoded").mkdir()
    torch.save((torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)), tmp_path / "decoded" / "mnist.pt")
    (tmp_path / "runs" / "mnist-resnet20-none-none-s0").mkdir(parents=True)
    (tmp_path / "runs" / "mnist-resnet20-none-none-s0" / "all_results.json").write_text("{}")
    script = Path(noise_level.__file__)
    argv = [sys.executable, script, "--work_dir", tmp_path, "--target", "mnist", "--seeds", "0", "--images", "10"]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 2 and "--images 10:" in done.stderr and "holds 4 test images" in done.stderr
