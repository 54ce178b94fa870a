"""Loading a saved model with φ: invalid saved state is refused with a CheckpointError naming the file and the
field, on every load path; `attach_pretrained` puts the saved φ + sites on a base the user has (peft's habit);
`load_perturbed` passes dtype / device_map / revision / subfolder / cache_dir / token on."""

import json
import logging
import re
import shutil

import pytest
import torch
from _builders import ConvNet
from safetensors.torch import load_file, save_file

import mp_hub
from mp_hub import CheckpointError, ConfigError, MetaPerturb
from mp_hub.models import CifarConv4Config, CifarConv4ForImageClassification, CifarConv4Model


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


# --- peft-style loading onto a given base, and the loader's arguments ------------------------------------------


def conv4(seed=0, hidden=8, blocks=4, head=True):
    torch.manual_seed(seed)
    config = CifarConv4Config(hidden_size=hidden, num_blocks=blocks, image_size=16, num_labels=3)
    return (CifarConv4ForImageClassification if head else CifarConv4Model)(config)


IMAGES = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def save_trained(model, folder):
    """`model` with φ whose sites moved off their initial state (running statistics of two training passes,
    κ 0.3) and a mean-mode calibration, saved to `folder`."""
    torch.manual_seed(0)
    handle = mp_hub.attach(model, MetaPerturb())
    model.train()
    with torch.no_grad():
        model(IMAGES)
        model(IMAGES.flip(0))
    handle.set_noise_coeff(0.3)
    handle.calibrate_mean_mode([IMAGES])
    return handle.save_pretrained(folder)


@pytest.fixture
def trained_dir(tmp_path):
    return save_trained(conv4(), tmp_path / "trained")


def _saved_state(folder):
    return load_file(folder / "metaperturb.safetensors")


def test_attach_pretrained_keeps_the_given_weights_and_takes_the_saved_state(trained_dir, caplog):
    base = conv4(seed=1)  # other weights, in training mode
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="mp_hub.perturbed_io"):
        handle = mp_hub.attach_pretrained(base, trained_dir)
    saved, state = _saved_state(trained_dir), handle.state_module().state_dict()
    assert set(state) == set(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    assert handle.base_state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in handle.base_state_dict().items())  # not the saved weights
    assert handle.noise_coeff == pytest.approx(0.3) and base.training  # its mode is left as it was
    assert "calibration" in caplog.text and "other weights in 4 of its 4 norm layers" in caplog.text


def test_attach_pretrained_onto_a_bfloat16_base(trained_dir):
    base = conv4(seed=1).to(torch.bfloat16).eval()
    handle = mp_hub.attach_pretrained(base, trained_dir)
    saved, state = _saved_state(trained_dir), handle.state_module().state_dict()
    assert all(torch.equal(state[k], saved[k].to(state[k].dtype)) for k in saved)
    assert {p.dtype for p in handle.phi_parameters()} == {torch.bfloat16}
    logits = base(IMAGES.to(torch.bfloat16)).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


@pytest.mark.parametrize("saved_head", [True, False])
def test_attach_pretrained_maps_a_head_model_onto_its_base_model_and_back(tmp_path, saved_head):
    folder = save_trained(conv4(head=saved_head), tmp_path / "saved")
    base = conv4(seed=1, head=not saved_head)
    handle = mp_hub.attach_pretrained(base, folder)
    config = json.loads((folder / "metaperturb_config.json").read_text())
    given = [r.name for r in handle.sites]
    assert given == [n.removeprefix("conv4.") if saved_head else f"conv4.{n}" for n in config["sites"]]
    saved = _saved_state(folder)
    first_saved, first_given = config["sites"][0].replace(".", "-"), handle.sites[0].key
    assert torch.equal(handle.site_list()[0].running_mean, saved[f"sites.{first_saved}.running_mean"])
    assert first_saved != first_given and len(handle.calibration.names) == 4


def test_attach_pretrained_names_the_mismatch_and_leaves_the_base_untouched(trained_dir):
    wider = conv4(hidden=16)
    with pytest.raises(CheckpointError, match=r"other channel counts: conv4\.blocks\.0\.activation: 8 saved, 16 in"):
        mp_hub.attach_pretrained(wider, trained_dir)
    assert mp_hub.attach_pretrained(conv4(), trained_dir)  # nothing is left attached to it
    shallower = conv4(blocks=3, hidden=8)
    with pytest.raises(CheckpointError, match=r"missing modules \['conv4\.blocks\.3\.activation'\]"):
        mp_hub.attach_pretrained(shallower, trained_dir)
    assert not hasattr(shallower, "metaperturb_phi")
    with pytest.raises(CheckpointError, match=r"4 sites saved in .*'cifar_conv4'.*cannot be placed on the given Conv"):
        mp_hub.attach_pretrained(ConvNet(), trained_dir)  # no config: no resolver


def test_load_perturbed_passes_the_loader_and_hub_arguments_on(trained_dir, monkeypatch, tmp_path):
    calls, downloads = [], []
    original = CifarConv4ForImageClassification.from_pretrained.__func__

    def from_pretrained(cls, source, **kwargs):
        calls.append((source, kwargs))
        return original(cls, trained_dir, dtype=kwargs["dtype"], device_map=kwargs["device_map"])

    def hf_hub_download(repo_id, filename, **kwargs):
        downloads.append((repo_id, filename, kwargs))
        return str(trained_dir / filename)

    monkeypatch.setattr(CifarConv4ForImageClassification, "from_pretrained", classmethod(from_pretrained))
    monkeypatch.setattr(mp_hub.hub, "hf_hub_download", hf_hub_download)
    hub = dict(revision="v2", subfolder="run1", cache_dir=tmp_path, token="hf_tok")
    model, handle = mp_hub.load_perturbed("org/conv4-phi", torch_dtype=torch.bfloat16, device_map="cpu", **hub)
    expected = dict(hub, local_files_only=False, force_download=False, dtype=torch.bfloat16, device_map="cpu")
    assert calls == [("org/conv4-phi", expected)]
    assert sorted(f for _, f, _ in downloads) == ["metaperturb.safetensors", "metaperturb_config.json"]
    assert all(repo == "org/conv4-phi" and hub.items() <= kwargs.items() for repo, _, kwargs in downloads)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # φ and sites too, as attach makes them
    assert not model.training and handle.noise_coeff == pytest.approx(0.3)


def test_load_perturbed_reads_a_revision_and_a_subfolder_of_a_hub_repo_from_the_hf_cache(trained_dir, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--org--conv4-phi"
    shutil.copytree(trained_dir, repo / "snapshots" / commit / "run1")
    (repo / "refs").mkdir()
    (repo / "refs" / "v2").write_text(commit)
    hub = dict(revision="v2", subfolder="run1", cache_dir=tmp_path / "cache")
    model, handle = mp_hub.load_perturbed("org/conv4-phi", dtype=torch.float64, **hub)
    saved, state = _saved_state(trained_dir), handle.state_module().state_dict()
    assert all(torch.equal(state[k], saved[k].to(state[k].dtype)) for k in saved)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert mp_hub.attach_pretrained(conv4(seed=1), "org/conv4-phi", **hub).noise_coeff == pytest.approx(0.3)
    with pytest.raises(mp_hub.NotCachedError, match=r"run1/metaperturb_config\.json of 'org/conv4-phi'"):
        mp_hub.load_perturbed("org/conv4-phi", subfolder="run1", cache_dir=tmp_path / "cache")  # main: absent


def test_a_local_subfolder_and_bad_loader_arguments(trained_dir, tmp_path):
    shutil.copytree(trained_dir, tmp_path / "repo" / "run1")
    handle = mp_hub.attach_pretrained(conv4(seed=1), tmp_path / "repo", subfolder="run1")
    assert handle.noise_coeff == pytest.approx(0.3)
    with pytest.raises(CheckpointError, match=r"repo has no metaperturb_config\.json"):
        mp_hub.load_perturbed(tmp_path / "repo")
    with pytest.raises(ConfigError, match="disagree: pass dtype only"):
        mp_hub.load_perturbed(trained_dir, dtype=torch.float16, torch_dtype=torch.bfloat16)
    with pytest.raises(ConfigError, match="with model= given, cast and place that model yourself"):
        mp_hub.load_perturbed(trained_dir, model=conv4(), dtype=torch.float16)
    spread = conv4()
    spread.hf_device_map = {"conv4": "cpu", "classifier": 0}
    with pytest.raises(ConfigError, match=r"device_map placed the model on \['0', 'cpu'\]"):
        mp_hub.attach_pretrained(spread, trained_dir)


def test_dtype_and_torch_dtype_naming_the_same_dtype_agree(trained_dir):
    same = [(torch.float16, "float16"), ("torch.bfloat16", torch.bfloat16), ("half", "torch.float16"), ("auto", "auto")]
    for dtype, torch_dtype in same:
        model, _ = mp_hub.load_perturbed(trained_dir, dtype=dtype, torch_dtype=torch_dtype)
        expected = torch.float32 if dtype == "auto" else getattr(torch, str(dtype).removeprefix("torch."))
        assert {p.dtype for p in model.parameters()} == {expected}, (dtype, torch_dtype)
    for dtype, torch_dtype in [("float16", torch.bfloat16), ("auto", torch.float32), (torch.float64, "float32")]:
        with pytest.raises(ConfigError, match=rf"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree"):
            mp_hub.load_perturbed(trained_dir, dtype=dtype, torch_dtype=torch_dtype)


BAD_LOADER_ARGUMENTS = [
    ("dtype", "float17"),
    ("dtype", 3),
    ("dtype", True),
    ("dtype", torch.int64),
    ("dtype", "nn"),  # an attribute of torch, not a dtype
    ("dtype", {"": "float17"}),
    ("torch_dtype", "float17"),
    ("torch_dtype", torch.complex64),
    ("device_map", "nope"),
    ("device_map", 5.5),
    ("device_map", -1),
    ("device_map", True),
    ("device_map", "0"),
    ("device_map", {"": "nope"}),
    ("device_map", {0: "cpu"}),
]


@pytest.mark.parametrize(("argument", "value"), BAD_LOADER_ARGUMENTS)
def test_a_bad_dtype_or_device_map_is_a_config_error_naming_it_before_anything_is_read(tmp_path, argument, value):
    with pytest.raises(ConfigError, match=f"^{argument}={re.escape(repr(value))}"):
        mp_hub.load_perturbed(tmp_path, **{argument: value})  # an empty folder: read, a CheckpointError


GOOD_LOADER_ARGUMENTS = [
    ("dtype", torch.float16),
    ("dtype", "bfloat16"),
    ("dtype", "torch.float64"),
    ("dtype", "half"),
    ("dtype", "auto"),
    ("dtype", {"": torch.bfloat16, "text_config": "float16"}),  # per sub-config, as transformers takes it
    ("torch_dtype", "float32"),
    *[("device_map", m) for m in ("auto", "balanced", "balanced_low_0", "sequential", "cpu", "cuda", "cuda:1")],
    *[("device_map", m) for m in ("meta", "cpu:0", torch.device("cpu"), 0, 2)],
    ("device_map", {"": "cpu"}),
    ("device_map", {"conv4": 0, "classifier": "disk", "head": torch.device("cpu")}),
]


@pytest.mark.parametrize(("argument", "value"), GOOD_LOADER_ARGUMENTS)
def test_what_from_pretrained_takes_as_dtype_or_device_map_passes_the_check(tmp_path, argument, value):
    with pytest.raises(CheckpointError, match=r"has no metaperturb_config\.json"):
        mp_hub.load_perturbed(tmp_path, **{argument: value})
