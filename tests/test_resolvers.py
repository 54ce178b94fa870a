"""Name matching, targets/placement, output kinds, the resolver registry and the handle's API (plain modules)."""

import copy
import logging
from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch
from _builders import ConvNet
from huggingface_hub import RepoUrl
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

import mp_hub
from mp_hub import AttachError, MetaPerturb, MetaPerturbConfig
from mp_hub.attach import find_handle
from mp_hub.resolvers import SiteSpec, _base, match_modules, resolve_targets

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
Pair = namedtuple("Pair", "features extra")


def test_match_modules_regex_is_a_full_match_and_lists_match_names_or_dotted_suffixes():
    model = ConvNet()
    assert [n for n, _ in match_modules(model, r"blocks\.\d+\.1")] == ["blocks.0.1", "blocks.1.1"]
    assert match_modules(model, r"1") == []  # full match, not search
    assert [n for n, _ in match_modules(model, ["0.1", "blocks.1.2"])] == ["blocks.0.1", "blocks.1.2"]
    assert match_modules(model, ["locks.0.1"]) == []  # a suffix must start at a dot
    with pytest.raises(AttachError, match="not a valid regular expression"):
        match_modules(model, "blocks.(")
    with pytest.raises(AttachError, match="non-empty list"):
        match_modules(model, [])


def test_channels_are_known_at_attach_time_for_convs_norms_blocks_and_relus():
    model = ConvNet(widths=(4, 6))
    assert [s.channels for s in resolve_targets(model, r"blocks\.\d+\.0").sites] == [4, 6]  # conv out
    assert [s.channels for s in resolve_targets(model, r"blocks\.\d+\.0", "input").sites] == [3, 4]  # conv in
    assert [s.channels for s in resolve_targets(model, r"blocks\.\d+").sites] == [4, 6]  # block: last norm
    assert [s.channels for s in resolve_targets(model, r"blocks\.\d+\.2").sites] == [4, 6]  # ReLU: the BN before
    with pytest.raises(AttachError, match="how many channels"):
        resolve_targets(model, ["head"])


def test_input_placement_perturbs_the_first_positional_input():
    model = ConvNet().eval()
    handle = mp_hub.attach(model, MetaPerturb(), targets=["blocks.1.0"], placement="input", spatial_norm=16)
    conv = model.blocks[1][0]
    conv_in, conv_out, site_out = [], [], []

    def record(module, args, out):
        conv_in.append(args[0])
        conv_out.append(out)

    conv.register_forward_hook(record)
    handle.site_modules()["blocks.1.0"].register_forward_hook(lambda m, a, out: site_out.append(out))
    with torch.no_grad():
        model(X)
        assert not torch.equal(conv_in[0], site_out[0])  # the module is called with its input, then φ changes it
        assert torch.equal(conv_out[0], type(conv).forward(conv, site_out[0]))
    assert handle.sites[0].placement == "input"


class Returns(nn.Module):
    """A conv whose forward returns its feature map inside a tuple, namedtuple, dict or ModelOutput."""

    def __init__(self, kind):
        super().__init__()
        self.conv, self.kind = nn.Conv2d(3, 4, 1), kind

    def forward(self, x):
        y, extra = self.conv(x), torch.ones(1)
        return {
            "tuple": lambda: (y, extra),
            "list": lambda: [y, extra],
            "namedtuple": lambda: Pair(y, extra),
            "dict": lambda: {"features": y, "extra": extra},
            "model_output": lambda: BaseModelOutput(last_hidden_state=y, hidden_states=(extra,)),
        }[self.kind]()


class Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("kind", ["tuple", "list", "namedtuple", "dict", "model_output"])
def test_first_entry_of_tuple_and_model_output_returns_is_perturbed(kind):
    model = Wrapper(Returns(kind))
    with torch.no_grad():
        plain = model(X)
        handle = mp_hub.attach(model, MetaPerturb(), targets=["inner"], spatial_norm=16)
        out = model(X)

    def entries(o):
        return list(o.values()) if isinstance(o, dict) else list(o)

    assert type(out) is type(plain) and not torch.equal(entries(out)[0], entries(plain)[0])
    assert str(entries(out)[1:]) == str(entries(plain)[1:])  # the other entries pass through
    handle.detach()


def test_bare_containers_are_refused_and_token_outputs_explain_what_is_needed():
    with pytest.raises(AttachError, match="bare nn.Sequential"):
        mp_hub.attach(nn.Sequential(nn.Conv2d(3, 4, 1)), MetaPerturb(), targets=["0"], spatial_norm=16)
    model = Wrapper(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(2)))
    mp_hub.attach(model, MetaPerturb(), targets=["1"], spatial_norm=16)
    with pytest.raises(AttachError, match=r"expects a \(B, 4, H, W\) feature map"):
        model(X)


def test_register_resolver_plugs_in_a_new_architecture():
    model = ConvNet()
    model.config = SimpleNamespace(model_type="toy_net", image_size=16)

    def resolve_toy(m):
        return [SiteSpec(name=f"blocks.{i}.2", module=m.blocks[i][2], channels=8, placement="input") for i in (0, 1)]

    mp_hub.register_resolver("toy_net", resolve_toy)
    try:
        handle = mp_hub.attach(model, MetaPerturb())
        assert handle.resolver == "toy_net" and handle.spatial_norm == 16 and len(handle.sites) == 2
        with pytest.raises(AttachError, match="applies to targets= only"):
            mp_hub.attach(ConvNet(), MetaPerturb(), placement="input")
    finally:
        _base._RESOLVERS.pop("toy_net")


def test_handle_controls_identity_modes_and_parameters(caplog):
    model = ConvNet().eval()
    with torch.no_grad():
        reference = model(X)
    phi = MetaPerturb()
    with caplog.at_level(logging.INFO, logger="mp_hub.attach"):
        handle = mp_hub.attach(model, phi, targets=r"blocks\.\d+\.1", spatial_norm=16, trainable_phi=True)
    assert "blocks.0.1" in caplog.text and "82 parameters, trainable" in handle.report()
    assert list(model.state_dict()).count("metaperturb_phi.channel_scale.fc.weight") == 1
    assert not any(k.startswith("metaperturb_sites") and "channel_scale" in k for k in model.state_dict())
    with torch.no_grad():
        handle.set_noise_coeff(0.0)
        assert torch.equal(model(X), reference)
        handle.set_noise_coeff(1.0)
        handle.set_inference_mode("off")
        assert torch.equal(model(X), reference)
        handle.set_inference_mode("mean")
        assert torch.equal(model(X), model(X)) and not torch.equal(model(X), reference)
    model.train()
    model(X).sum().backward()
    assert all(p.grad is not None for p in handle.phi_parameters())  # trainable φ learns
    handle.detach()
    handle.detach()  # idempotent
    assert all(p.requires_grad for p in phi.parameters())
    with pytest.raises(AttachError, match="detached"):
        handle.set_noise_coeff(0.5)


@pytest.mark.parametrize("site_channels, warns", [([64, 512], True), ([8, 64], False), (None, False)])
def test_warns_when_site_widths_are_far_from_meta_training(site_channels, warns, caplog):
    provenance = {} if site_channels is None else {"site_channels": site_channels}
    phi = MetaPerturb(MetaPerturbConfig(provenance=provenance))
    with caplog.at_level(logging.WARNING, logger="mp_hub.attach"):
        mp_hub.attach(ConvNet(), phi, targets=r"blocks\.\d+\.1", spatial_norm=16)
    assert ("far outside that range" in caplog.text) is warns


def test_deepcopy_gives_a_copy_with_its_own_sites():
    model = ConvNet().eval()
    handle = mp_hub.attach(model, MetaPerturb(), targets=r"blocks\.\d+\.1", spatial_norm=16)
    twin = copy.deepcopy(model)
    assert find_handle(twin) is not handle and find_handle(twin).model is twin
    with torch.no_grad():
        torch.manual_seed(3)
        expected = model(X)
        handle.detach()
        torch.manual_seed(3)
        assert torch.equal(twin(X), expected)  # the copy still perturbs, with its own sites


def test_dtype_and_device_follow_the_model():
    model = ConvNet().double()
    handle = mp_hub.attach(model, MetaPerturb(), targets=r"blocks\.\d+\.1", spatial_norm=16)
    assert all(p.dtype == torch.float64 for p in handle.phi_parameters())
    assert model(X.double()).dtype == torch.float64
    model.float()
    assert all(b.dtype == torch.float32 for b in model.metaperturb_sites.buffers())


def test_save_perturbed_needs_an_attached_model_and_push_uses_one_commit(tmp_path):
    with pytest.raises(AttachError, match="no φ is attached"):
        mp_hub.save_perturbed(ConvNet(), tmp_path)
    model = ConvNet()
    handle = mp_hub.attach(model, MetaPerturb(), targets=r"blocks\.\d+\.1", spatial_norm=16)
    wrapper = SimpleNamespace(module=model)
    assert mp_hub.save_perturbed(wrapper, tmp_path / "a") == tmp_path / "a"

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            self.created = repo_id
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, repo_id, folder_path, commit_message, **kwargs):
            from pathlib import Path

            self.files = sorted(p.name for p in Path(folder_path).iterdir())
            self.card = (Path(folder_path) / "README.md").read_text()
            return "commit"

    api = FakeApi()
    assert handle.push_to_hub("me/perturbed-net", api=api) == "commit"
    assert api.files == ["README.md", "metaperturb.safetensors", "metaperturb_config.json", "model.safetensors"]
    assert 'load_perturbed("me/perturbed-net")' in api.card and "library_name: mp_hub" in api.card


def test_swin_adapter_refuses_tokens_that_do_not_fit_input_dimensions():
    from mp_hub.resolvers.swin import swin_tokens

    with pytest.raises(AttachError, match="not a"):
        swin_tokens(torch.zeros(1, 15, 4), lambda t: t, (None, (4, 4)), {})
