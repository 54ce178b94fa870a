"""Mean-mode calibration: BatchNorm statistics of mean-mode activations, used only in eval "mean" passes."""

import copy
import json
import logging

import pytest
import torch
from _builders import TARGETS, ConvNet, LayerNormNet, _images, _noisy_phi, _trained
from transformers import ViTConfig, ViTForImageClassification

import mp_hub
from mp_hub import AttachError, ConfigError, InvalidInputError, MetaPerturb
from mp_hub.attach import find_handle
from mp_hub.mean_mode import calibratable_norms
from mp_hub.mean_mode.predict import mean_predict
from mp_hub.model_edits import edited_forward
from mp_hub.models import CifarResNetConfig, CifarResNetForImageClassification


@pytest.fixture
def convnet():
    model = ConvNet(seed=0)
    handle = mp_hub.attach(model, _noisy_phi(), **TARGETS)
    return _trained(model), handle


def _mean_pass(model, x):
    with torch.no_grad(), mp_hub.evaluation.sites_inference_mode(model, "mean"):
        return model(x)


def test_calibration_leaves_the_model_state_and_mode_unchanged(convnet):
    model, handle = convnet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = mp_hub.calibrate_mean_mode(model, _images().split(16))
    assert seen == 64 and not model.training
    after = {k: v for k, v in model.state_dict().items() if not k.startswith("metaperturb_calibration.")}
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert all(norm.momentum == 0.1 for norm in calibratable_norms(model).values())


def test_calibrated_statistics_are_batch_averages_in_mean_mode(convnet):
    model, handle = convnet
    images = _images()
    mp_hub.calibrate_mean_mode(model, images.split(16))
    stats = handle.calibration.stats
    # The first BN reads the first conv's output, before any site: its statistics are the data's.
    conv0 = model.blocks[0][0]
    with torch.no_grad():
        feats = [conv0(x) for x in images.split(16)]
    expected_mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    expected_var = torch.stack([f.var((0, 2, 3)) for f in feats]).mean(0)  # unbiased per batch, then averaged
    torch.testing.assert_close(stats["blocks-0-1"].running_mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["blocks-0-1"].running_var, expected_var, rtol=1e-5, atol=1e-6)
    # The second BN reads site 0's mean-mode output: differs from the noisy-training statistics.
    assert not torch.allclose(stats["blocks-1-1"].running_var, model.blocks[1][1].running_var, rtol=1e-2)


def test_mean_mode_uses_calibration_and_other_modes_do_not(convnet):
    model, handle = convnet
    x = _images(8, seed=3)
    reference = copy.deepcopy(model)  # uncalibrated
    mp_hub.calibrate_mean_mode(model, _images().split(16))
    # Expected mean-mode output: the calibrated statistics written into the BNs of an uncalibrated copy.
    manual = copy.deepcopy(reference)
    for name, norm in calibratable_norms(manual).items():
        stats = handle.calibration.stats[name.replace(".", "-")]
        norm.running_mean.copy_(stats.running_mean)
        norm.running_var.copy_(stats.running_var)
    torch.testing.assert_close(_mean_pass(model, x), _mean_pass(manual, x), rtol=0, atol=0)
    assert not torch.allclose(_mean_pass(model, x), _mean_pass(reference, x))
    # "mc" in eval and training mode: the model's own statistics (same noise, same output as uncalibrated)
    for mode in ("mc", "off"):
        with torch.no_grad(), mp_hub.evaluation.sites_inference_mode(model, mode):
            torch.manual_seed(5)
            got = model(x)
        with torch.no_grad(), mp_hub.evaluation.sites_inference_mode(reference, mode):
            torch.manual_seed(5)
            want = reference(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # and the BN buffers are the model's own again after a mean pass
    for name, norm in calibratable_norms(model).items():
        assert torch.equal(norm.running_var, calibratable_norms(reference)[name].running_var)


def test_stale_calibration_is_not_used_and_says_so(convnet, caplog):
    model, handle = convnet
    mp_hub.calibrate_mean_mode(model, _images().split(16))
    x = _images(8, seed=3)
    _trained(model, steps=1)  # training moves num_batches_tracked: the calibration no longer describes the model
    uncalibrated = copy.deepcopy(model)
    find_handle(uncalibrated).remove_calibration()
    with caplog.at_level(logging.WARNING, logger="mp_hub.mean_mode.state"):
        got = _mean_pass(model, x)
    assert "stale" in caplog.text
    torch.testing.assert_close(got, _mean_pass(uncalibrated, x), rtol=0, atol=0)
    assert handle.calibration.stale_norms()
    mp_hub.calibrate_mean_mode(model, _images().split(16))  # recalibrating makes it current again
    assert not handle.calibration.stale_norms()


def test_max_images_and_recalibration_replace(convnet):
    model, handle = convnet
    assert mp_hub.calibrate_mean_mode(model, _images().split(16), max_images=40) == 40
    first = handle.calibration
    assert handle.calibrate_mean_mode([_images()], max_images=None) == 64
    assert handle.calibration is not first and model.metaperturb_calibration is handle.calibration
    assert int(handle.calibration.stats["blocks-1-1"].num_images) == 64


def test_detach_removes_calibration_and_its_forwards(convnet):
    model, handle = convnet
    bare = ConvNet(seed=0)
    bare.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("metaperturb_")})
    bare.eval()
    mp_hub.calibrate_mean_mode(model, _images().split(16))
    assert all(edited_forward(norm).replacement is not None for norm in calibratable_norms(model).values())
    handle.detach()
    assert not hasattr(model, "metaperturb_calibration")
    assert all("forward" not in norm.__dict__ for norm in calibratable_norms(model).values())  # their own again
    x = _images(8, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), bare(x), rtol=0, atol=0)


def test_batches_may_be_tuples_or_dicts(convnet):
    model, _ = convnet
    images = _images(32)
    assert mp_hub.calibrate_mean_mode(model, [(images, torch.zeros(32, dtype=torch.long))]) == 32
    assert mp_hub.calibrate_mean_mode(model, [{"pixel_values": images}]) == 32


def test_errors_are_typed_and_named(convnet):
    model, _ = convnet
    with pytest.raises(AttachError, match="no φ is attached"):
        mp_hub.calibrate_mean_mode(ConvNet(seed=0), [_images()])
    with pytest.raises(ConfigError, match="max_images"):
        mp_hub.calibrate_mean_mode(model, [_images()], max_images=1)
    with pytest.raises(InvalidInputError, match="no batch of at least 2"):
        mp_hub.calibrate_mean_mode(model, [])
    vit = ViTForImageClassification(
        ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    )
    mp_hub.attach(vit, MetaPerturb())
    with pytest.raises(ConfigError, match="no BatchNorm with running statistics, only LayerNorms.*mc_fit_steps > 0"):
        mp_hub.calibrate_mean_mode(vit, [_images()])
    plain = ConvNet(seed=0)
    for block in plain.blocks:
        block[1] = torch.nn.Identity()  # no BatchNorm, no LayerNorm
    mp_hub.attach(plain, MetaPerturb(), **TARGETS)
    with pytest.raises(ConfigError, match="no BatchNorm with running statistics and no nn.LayerNorm with a weight"):
        mp_hub.calibrate_mean_mode(plain, [_images()], mc_fit_steps=2)


def test_uncalibrated_mean_predict_warns_once(convnet, caplog):
    model, _ = convnet
    with caplog.at_level(logging.WARNING, logger="mp_hub.mean_mode.predict"):
        mean_predict(model, _images(4))
        mean_predict(model, _images(4))
    assert caplog.text.count("BatchNorm model without calibration") == 1
    caplog.clear()
    layer_norm_model = LayerNormNet()
    mp_hub.attach(layer_norm_model, MetaPerturb(), **TARGETS)
    with caplog.at_level(logging.WARNING, logger="mp_hub.mean_mode.predict"):
        mean_predict(layer_norm_model.eval(), _images(4))
    assert "LayerNorm model without calibration" in caplog.text and "mc_fit_steps=200" in caplog.text


def test_save_and_load_keep_the_calibration(tmp_path):
    model = CifarResNetForImageClassification(CifarResNetConfig(depth=8, hidden_sizes=[4, 8, 8], num_labels=3))
    handle = mp_hub.attach(model, _noisy_phi())
    _trained(model)
    handle.save_pretrained(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "metaperturb_config.json").read_text())["format_version"] == 1
    mp_hub.calibrate_mean_mode(model, _images().split(16))
    handle.save_pretrained(tmp_path / "calibrated")
    config = json.loads((tmp_path / "calibrated" / "metaperturb_config.json").read_text())
    assert config["format_version"] == 2 and config["mean_mode_calibration"]["num_images"] == 64
    assert len(config["mean_mode_calibration"]["norm_layers"]) == len(calibratable_norms(model))
    assert "64 images" in (tmp_path / "calibrated" / "README.md").read_text()

    loaded, loaded_handle = mp_hub.load_perturbed(tmp_path / "calibrated")
    x = _images(4, seed=3)
    torch.testing.assert_close(_mean_pass(loaded, x), _mean_pass(model, x), rtol=0, atol=0)
    assert not loaded_handle.calibration.stale_norms()
    # the base weights are still a plain transformers checkpoint
    plain = CifarResNetForImageClassification.from_pretrained(tmp_path / "calibrated")
    assert not hasattr(plain, "metaperturb_calibration")


def test_loading_refuses_a_calibration_for_missing_layers(tmp_path):
    model = CifarResNetForImageClassification(CifarResNetConfig(depth=8, hidden_sizes=[4, 8, 8], num_labels=3))
    handle = mp_hub.attach(model, _noisy_phi())
    mp_hub.calibrate_mean_mode(_trained(model), _images().split(16))
    handle.save_pretrained(tmp_path)
    path = tmp_path / "metaperturb_config.json"
    config = json.loads(path.read_text())
    config["mean_mode_calibration"]["norm_layers"].append("resnet.no_such_bn")
    path.write_text(json.dumps(config))
    with pytest.raises(mp_hub.CheckpointError, match="no_such_bn"):
        mp_hub.load_perturbed(tmp_path)


def test_a_float64_model_gets_float64_statistics():
    model = ConvNet(seed=0).double()
    handle = mp_hub.attach(model, _noisy_phi().double(), **TARGETS)
    model.eval()
    mp_hub.calibrate_mean_mode(model, _images().double().split(32))
    assert {s.running_mean.dtype for s in handle.calibration.stats.values()} == {torch.float64}
    assert mean_predict(model, _images(4).double()).dtype == torch.float32  # probabilities: float32 softmax


def test_the_old_inference_module_is_a_deprecated_alias(monkeypatch):
    import importlib
    import sys

    from mp_hub import mean_mode

    monkeypatch.delitem(sys.modules, "mp_hub.inference", raising=False)
    with pytest.warns(FutureWarning, match="import mc_predict and mean_predict from mp_hub.mean_mode"):
        old = importlib.import_module("mp_hub.inference")
    assert (old.mc_predict, old.mean_predict) == (mean_mode.mc_predict, mean_mode.mean_predict)
