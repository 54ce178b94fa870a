"""Invalid saved state is refused with a CheckpointError naming the file and the field, on every load path."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import mp_hub
from mp_hub import CheckpointError, MetaPerturb
from mp_hub.models import CifarConv4Config, CifarConv4ForImageClassification


@pytest.fixture
def phi_dir(tmp_path):
    torch.manual_seed(0)
    return MetaPerturb().save_pretrained(tmp_path / "phi")


@pytest.fixture
def perturbed_dir(tmp_path):
    torch.manual_seed(0)
    model = CifarConv4ForImageClassification(CifarConv4Config(hidden_size=8, num_labels=3))
    return mp_hub.attach(model, MetaPerturb()).save_pretrained(tmp_path / "perturbed")


def _edit_tensor(path, key, value):
    state = load_file(path)
    state[key] = torch.full_like(state[key], value)
    save_file(state, path)


def _edit_json(path, edit):
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _first_site_key(folder):
    return next(k for k in load_file(folder / "metaperturb.safetensors") if k.startswith("sites."))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_phi_weights_are_refused(phi_dir, value):
    _edit_tensor(phi_dir / "model.safetensors", "channel_scale.fc.weight", value)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*'channel_scale\.fc\.weight'.*non-finite"):
        MetaPerturb.from_pretrained(phi_dir)


@pytest.mark.parametrize("key", ["phi.noise_generator.layer1.mean_kernel", "running_var"])
def test_non_finite_phi_or_site_statistics_in_a_perturbed_folder_are_refused(perturbed_dir, key):
    if key == "running_var":
        key = _first_site_key(perturbed_dir).rsplit(".", 1)[0] + ".running_var"
    _edit_tensor(perturbed_dir / "metaperturb.safetensors", key, float("nan"))
    with pytest.raises(CheckpointError, match=rf"metaperturb\.safetensors.*'{key}'.*non-finite"):
        mp_hub.load_perturbed(perturbed_dir)


def test_noise_coeff_outside_what_set_noise_coeff_accepts_is_refused(perturbed_dir):
    key = _first_site_key(perturbed_dir).rsplit(".", 1)[0] + ".noise_coeff"
    _edit_tensor(perturbed_dir / "metaperturb.safetensors", key, 7.0)
    with pytest.raises(CheckpointError, match=rf"metaperturb\.safetensors: {key}: .*\[0, 1\], got 7\.0"):
        mp_hub.load_perturbed(perturbed_dir)


def test_non_utf8_phi_config_is_refused(phi_dir):
    (phi_dir / "config.json").write_bytes(b'{"h_dim": 4, "note": "\xff\xfe"}')
    with pytest.raises(CheckpointError, match=r"config\.json is not UTF-8"):
        MetaPerturb.from_pretrained(phi_dir)


def test_non_utf8_perturbed_config_is_refused(perturbed_dir):
    path = perturbed_dir / "metaperturb_config.json"
    path.write_bytes(b"\x80" + path.read_bytes())
    with pytest.raises(CheckpointError, match=r"metaperturb_config\.json is not UTF-8"):
        mp_hub.load_perturbed(perturbed_dir)


def test_bool_h_dim_in_phi_config_is_refused(phi_dir):
    _edit_json(phi_dir / "config.json", lambda c: c.update(h_dim=True))
    with pytest.raises(CheckpointError, match=r"config\.json.*h_dim must be a positive int, got True \(bool\)"):
        MetaPerturb.from_pretrained(phi_dir)


def test_bool_h_dim_in_perturbed_phi_config_is_refused(perturbed_dir):
    _edit_json(perturbed_dir / "metaperturb_config.json", lambda c: c["phi_config"].update(h_dim=True))
    with pytest.raises(CheckpointError, match=r"metaperturb_config\.json.*phi_config.*h_dim.*True \(bool\)"):
        mp_hub.load_perturbed(perturbed_dir)


def test_string_format_version_is_refused(perturbed_dir):
    _edit_json(perturbed_dir / "metaperturb_config.json", lambda c: c.update(format_version="3"))
    with pytest.raises(CheckpointError, match=r"metaperturb_config\.json.*format_version.*'3' \(str\)"):
        mp_hub.load_perturbed(perturbed_dir)


@pytest.mark.parametrize("model_class", ["NoSuchModelForImageClassification", "CifarConv4Config", "__version__", 5])
def test_edited_model_class_is_refused(perturbed_dir, model_class):
    _edit_json(perturbed_dir / "metaperturb_config.json", lambda c: c.update(model_class=model_class))
    with pytest.raises(CheckpointError, match=rf"metaperturb_config\.json.*model_class.*{model_class}"):
        mp_hub.load_perturbed(perturbed_dir)


@pytest.mark.parametrize(
    ("field", "value"),
    [("channel_norm", 0), ("spatial_norm", float("nan")), ("trainable_phi", "yes"), ("sites", "conv4"), ("targets", 3)],
)
def test_other_invalid_perturbed_config_fields_are_named(perturbed_dir, field, value):
    _edit_json(perturbed_dir / "metaperturb_config.json", lambda c: c.update({field: value}))
    with pytest.raises(CheckpointError, match=rf"metaperturb_config\.json has invalid fields: {field} must be"):
        mp_hub.load_perturbed(perturbed_dir)
