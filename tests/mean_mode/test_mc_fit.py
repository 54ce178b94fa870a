"""MC-matched mean-mode calibration: BatchNorm statistics fitted so that one mean pass follows the MC average."""

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from _builders import TARGETS, ConvNet, LayerNormNet, _images, _noisy_phi, _trained

import mp_hub
from mp_hub import ConfigError
from mp_hub.evaluation import sites_inference_mode
from mp_hub.mean_mode import CalibratedNormForward, calibratable_norms, fittable_layer_norms
from mp_hub.mean_mode.predict import mc_predict, mean_predict
from mp_hub.model_edits import edited_forward
from mp_hub.models import CifarResNetConfig, CifarResNetForImageClassification

FIT = dict(mc_fit_steps=40, mc_samples=8)


@pytest.fixture
def resnet():
    model = CifarResNetForImageClassification(CifarResNetConfig(depth=8, hidden_sizes=[4, 8, 8], num_labels=3))
    with torch.no_grad():  # confident logits: then the MC average and one mean pass differ clearly
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(50)
    handle = mp_hub.attach(model, _noisy_phi())
    return _trained(model), handle


def _kl_to_mc(model, images, seed):
    """KL(MC-8 ‖ mean mode) on `images`, the teacher drawn as the fit draws it."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        teacher = torch.cat([mc_predict(model, chunk, FIT["mc_samples"]) for chunk in images.split(128)])
    student = mean_predict(model, images)
    return F.kl_div(student.log(), teacher, reduction="batchmean").item()


def test_fit_brings_mean_mode_closer_to_mc_and_stores_what_it_did(resnet):
    model, handle = resnet
    images = _images(96)
    mp_hub.calibrate_mean_mode(model, images.split(32), seed=3)
    moments_only = _kl_to_mc(model, images, seed=3)
    mp_hub.calibrate_mean_mode(model, images.split(32), seed=3, **FIT)
    fit = handle.calibration.mc_fit
    assert fit["steps"] == 40 and fit["mc_samples"] == 8 and fit["images"] == 96
    assert fit["kl_before"] == pytest.approx(moments_only, rel=1e-3)
    # the stored statistics are the fitted ones: an ordinary mean pass reproduces the fit's final divergence
    assert _kl_to_mc(model, images, seed=3) == pytest.approx(fit["kl_after"], rel=1e-3)
    assert fit["kl_before"] > 0.01 and fit["kl_after"] < 0.5 * fit["kl_before"]


def test_fit_leaves_model_rng_and_forwards_as_they_were(resnet):
    model, handle = resnet
    model.train()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    next(model.parameters()).requires_grad_(False)  # a caller's freezing survives
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    mp_hub.calibrate_mean_mode(model, _images().split(32), **FIT)
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(torch.equal(params[n], p) for n, p in model.named_parameters())
    assert all(torch.equal(buffers[n], b) for n, b in model.named_buffers() if not n.startswith("metaperturb_calib"))
    assert all(isinstance(_replacement(norm), CalibratedNormForward) for norm in calibratable_norms(model).values())


def _replacement(norm):
    """What computes the norm layer's output now (None: its own forward)."""
    chain = edited_forward(norm)
    return None if chain is None else chain.replacement


def test_fit_is_deterministic(resnet):
    model, handle = resnet
    stats = []
    for _ in range(2):
        mp_hub.calibrate_mean_mode(model, _images().split(32), seed=5, **FIT)
        stats.append({k: v.clone() for k, v in handle.calibration.state_dict().items()})
    assert all(torch.equal(stats[0][k], stats[1][k]) for k in stats[0])


def test_the_fit_shows_its_progress_only_when_asked(resnet, capsys):
    model, handle = resnet
    mp_hub.calibrate_mean_mode(model, _images().split(32), **FIT)
    assert "mean-mode fit" not in capsys.readouterr().err
    mp_hub.calibrate_mean_mode(model, _images().split(32), progress=True, **FIT)
    err = capsys.readouterr().err
    assert "mean-mode fit: MC-8 targets" in err and f"{FIT['mc_fit_steps']}/{FIT['mc_fit_steps']}" in err


def test_bad_arguments_and_a_failed_fit_keep_the_previous_calibration(resnet, monkeypatch):
    model, handle = resnet
    for bad in (dict(mc_fit_steps=-1), dict(mc_fit_steps=True), dict(mc_fit_steps=2, mc_samples=0)):
        with pytest.raises(ConfigError, match="mc_fit_steps|mc_samples"):
            mp_hub.calibrate_mean_mode(model, [_images()], **bad)
    mp_hub.calibrate_mean_mode(model, _images().split(32))
    previous = handle.calibration
    with pytest.raises(mp_hub.InvalidInputError, match="one shape"):
        mp_hub.calibrate_mean_mode(model, [_images(8), torch.randn(8, 3, 16, 16)], **FIT)
    forwards = {n: _replacement(norm) for n, norm in calibratable_norms(model).items()}
    monkeypatch.setattr(mp_hub.mean_mode.mc_fit, "_mean_mode_divergence", lambda *a: float("nan"))
    with pytest.raises(FloatingPointError, match="diverged"):
        mp_hub.calibrate_mean_mode(model, _images().split(32), **FIT)
    assert handle.calibration is previous and model.metaperturb_calibration is previous
    assert forwards == {n: _replacement(norm) for n, norm in calibratable_norms(model).items()}
    assert all(isinstance(forward, CalibratedNormForward) for forward in forwards.values())


def test_plain_module_and_save_load_round_trip(tmp_path, resnet):
    convnet = ConvNet(seed=0)
    mp_hub.attach(convnet, _noisy_phi(), **TARGETS)
    assert mp_hub.calibrate_mean_mode(_trained(convnet), _images().split(32), **FIT) == 64

    model, handle = resnet
    mp_hub.calibrate_mean_mode(model, _images().split(32), **FIT)
    handle.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "metaperturb_config.json").read_text())
    assert config["mean_mode_calibration"]["mc_fit"] == handle.calibration.mc_fit
    assert "fitted to MC-8 (40 steps" in (tmp_path / "README.md").read_text()
    loaded, loaded_handle = mp_hub.load_perturbed(tmp_path)
    assert loaded_handle.calibration.mc_fit == handle.calibration.mc_fit
    x = _images(4, seed=3)
    torch.testing.assert_close(mean_predict(loaded, x), mean_predict(model, x), rtol=0, atol=0)


def test_layer_norm_model_is_calibrated_by_the_fit_alone(tmp_path, caplog):
    model = LayerNormNet()
    handle = mp_hub.attach(model, _noisy_phi(), **TARGETS)
    model.eval()
    images = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(2))  # 16 px: a fast test
    with pytest.raises(ConfigError, match="only LayerNorms.*mc_fit_steps > 0"):
        mp_hub.calibrate_mean_mode(model, images.split(32))
    own = {n: (m.weight.clone(), m.bias.clone()) for n, m in fittable_layer_norms(model).items()}
    assert mp_hub.calibrate_mean_mode(model, images.split(32), seed=3, **FIT) == 64
    calibration, fit = handle.calibration, handle.calibration.mc_fit
    assert calibration.names == calibration.layer_norm_names == ["blocks.0.2.norm", "blocks.1.2.norm"]
    assert fit["kl_before"] > 1e-3 and fit["kl_after"] < 0.5 * fit["kl_before"]
    assert _kl_to_mc(model, images, seed=3) == pytest.approx(fit["kl_after"], rel=1e-3)  # the fitted ones are used
    for name, norm in fittable_layer_norms(model).items():  # the model's own LayerNorms are untouched
        assert torch.equal(norm.weight, own[name][0]) and torch.equal(norm.bias, own[name][1])
        assert isinstance(_replacement(norm), CalibratedNormForward)

    handle.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "metaperturb_config.json").read_text())
    assert config["format_version"] == 3 and config["mean_mode_calibration"]["norm_layers"] == calibration.names
    loaded, loaded_handle = mp_hub.load_perturbed(tmp_path, model=LayerNormNet(seed=1))
    assert loaded_handle.calibration.layer_norm_names == calibration.names
    x = images[:4]
    torch.testing.assert_close(mean_predict(loaded, x), mean_predict(model, x), rtol=0, atol=0)

    norm, stats = model.blocks[0][2].norm, calibration.stats["blocks-0-2-norm"]
    tokens = torch.randn(2, 5, 8)
    with sites_inference_mode(model, "mean"):
        used = norm(tokens)
    torch.testing.assert_close(used, F.layer_norm(tokens, (8,), stats.weight, stats.bias, norm.eps), rtol=0, atol=0)
    assert not torch.allclose(stats.weight, norm.weight)
    with torch.no_grad():  # a training step on the LayerNorm makes its calibration stale: then it is not used
        norm.weight.add_(0.1)
    with sites_inference_mode(model, "mean"), caplog.at_level(logging.WARNING, logger="mp_hub.mean_mode.state"):
        used = norm(tokens)
    assert handle.calibration.stale_norms() == ["blocks.0.2.norm"] and "stale" in caplog.text
    torch.testing.assert_close(used, F.layer_norm(tokens, (8,), norm.weight, norm.bias, norm.eps), rtol=0, atol=0)
