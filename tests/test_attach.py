"""mp_hub.attach on every supported architecture (tiny models from configs): sites, gradients, detach, save/reload."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _builders import ConvNet
from safetensors import safe_open
from torch import nn
from transformers import (
    AutoModelForImageClassification,
    ConvNextConfig,
    ConvNextV2Config,
    DeiTConfig,
    DeiTForImageClassification,
    Dinov2Config,
    Dinov2WithRegistersConfig,
    EfficientNetConfig,
    MobileNetV2Config,
    RegNetConfig,
    ResNetConfig,
    SwinConfig,
    ViTConfig,
)

import mp_hub
from mp_hub import AttachError, MetaPerturb
from mp_hub.aligned_memory import ALIGNMENT
from mp_hub.mean_mode.predict import mc_predict
from mp_hub.models import (
    CifarConv4Config,
    CifarConv4ForImageClassification,
    CifarResNetConfig,
    CifarResNetForImageClassification,
    CifarVggConfig,
    CifarVggForImageClassification,
)

VIT = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8, num_labels=3)


def _auto(config):
    return lambda: AutoModelForImageClassification.from_config(config)


def _with_batch_statistics(model):
    """`model` with the BatchNorm statistics of a batch of images, as after training. transformers draws conv
    weights from N(0, 0.02) and eval-mode BatchNorms start at mean 0, var 1, so they normalise nothing: in a deep
    thin model each block then shrinks the features ~10×, to logits of ~1e-30 (where no comparison means much)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one batch sets the statistics outright
    training = model.training
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return model.train(training)


def _mobilenet_v2():
    config = MobileNetV2Config(depth_multiplier=0.1, min_depth=4, image_size=32, num_labels=3)
    return _with_batch_statistics(AutoModelForImageClassification.from_config(config))


def _efficientnet_config():
    return EfficientNetConfig(width_coefficient=0.1, depth_coefficient=0.3, hidden_dim=128, image_size=32, num_labels=3)


def _efficientnet():
    model = AutoModelForImageClassification.from_config(_efficientnet_config())
    for module in model.modules():  # its init draws BN weights from N(0, 0.02): each BN would scale by ~0.02
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
    return _with_batch_statistics(model)


# name -> (build, expected number of sites (= blocks, counted from the config), attach kwargs)
ARCHS = {
    "resnet_basic": (
        _auto(
            ResNetConfig(
                embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="basic", image_size=32, num_labels=3
            )
        ),
        3,
        {},
    ),
    "resnet_bottleneck": (
        _auto(ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], image_size=32, num_labels=3)),
        2,
        {},
    ),
    "convnext": (
        _auto(
            ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, patch_size=2, image_size=32, num_labels=3)
        ),
        3,
        {},
    ),
    "convnextv2": (
        _auto(
            ConvNextV2Config(
                hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, patch_size=2, image_size=32, num_labels=3
            )
        ),
        2,
        {},
    ),
    "regnet": (
        _auto(
            RegNetConfig(
                embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], groups_width=8, image_size=32, num_labels=3
            )
        ),
        3,
        {},
    ),
    "mobilenet_v2": (_mobilenet_v2, 16, {}),
    "efficientnet": (
        _efficientnet,
        sum(math.ceil(0.3 * r) for r in _efficientnet_config().num_block_repeats),
        {},
    ),
    "vit": (_auto(ViTConfig(intermediate_size=32, **VIT)), 2, {}),
    "deit": (lambda: DeiTForImageClassification(DeiTConfig(intermediate_size=32, **VIT)), 2, {}),
    "dinov2": (_auto(Dinov2Config(mlp_ratio=2, **VIT)), 2, {}),
    "dinov2_registers": (_auto(Dinov2WithRegistersConfig(mlp_ratio=2, num_register_tokens=2, **VIT)), 2, {}),
    "swin": (
        _auto(
            SwinConfig(
                embed_dim=8, depths=[1, 2], num_heads=[1, 2], window_size=2, patch_size=4, image_size=32, num_labels=3
            )
        ),
        3,
        {},
    ),
    "cifar_resnet": (
        lambda: CifarResNetForImageClassification(CifarResNetConfig(depth=8, hidden_sizes=[4, 8, 8], num_labels=3)),
        3,
        {},
    ),
    "cifar_vgg": (
        lambda: CifarVggForImageClassification(CifarVggConfig(hidden_sizes=[4, 8, 8], pool_after=[0, 2], num_labels=3)),
        3,
        {},
    ),
    "cifar_conv4": (lambda: CifarConv4ForImageClassification(CifarConv4Config(hidden_size=8, num_labels=3)), 4, {}),
    "plain_targets": (lambda: ConvNet(seed=None), 2, dict(targets=r"blocks\.\d+\.1", spatial_norm=32)),
}


def logits(model, x):
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def build(name):
    factory, n_sites, kwargs = ARCHS[name]
    torch.manual_seed(0)
    return factory(), n_sites, kwargs


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _grad_names(model, x):
    model.zero_grad(set_to_none=True)
    logits(model, x).square().mean().backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and not n.startswith("metaperturb_")}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_sites_forward_backward_and_gradients(arch, pixels):
    model, n_sites, kwargs = build(arch)
    model.train()
    plain_grads = _grad_names(model, pixels)  # which θ get gradients without φ
    phi = MetaPerturb()
    handle = mp_hub.attach(model, phi, **kwargs)
    assert len(handle.sites) == n_sites and len(model.metaperturb_sites) == n_sites
    assert model.metaperturb_phi is phi and all(site.phi is phi for site in model.metaperturb_sites.values())
    assert _grad_names(model, pixels) == plain_grads and plain_grads  # φ does not cut any gradient path
    assert all(p.grad is None and not p.requires_grad for p in handle.phi_parameters())
    assert all(r.spatial is not None for r in handle.sites)  # known after the first forward
    assert {id(p) for p in handle.model_parameters()}.isdisjoint(id(p) for p in phi.parameters())
    assert len(handle.model_parameters()) + len(handle.phi_parameters()) == len(list(model.parameters()))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_detach_restores_outputs_and_save_reload_is_exact(arch, pixels, tmp_path):
    model, _, kwargs = build(arch)
    model.eval()
    with torch.no_grad():
        reference = logits(model, pixels)
    keys = set(model.state_dict())
    handle = mp_hub.attach(model, MetaPerturb(), **kwargs)
    with torch.no_grad():
        for site in handle.site_modules().values():  # only the sites train: the model's BN statistics stay put
            site.train()
        logits(model, pixels)  # updates the sites' running statistics: non-trivial state to save
        model.eval()
        handle.set_noise_coeff(0.5)
        torch.manual_seed(7)
        perturbed = logits(model, pixels)
        with handle.disabled():
            assert torch.equal(logits(model, pixels), reference)
    assert not torch.equal(perturbed, reference)

    handle.save_pretrained(tmp_path)
    reloaded, handle2 = mp_hub.load_perturbed(
        tmp_path, **({"model": ConvNet(seed=None)} if "targets" in kwargs else {})
    )
    assert type(reloaded) is type(model) and [r.name for r in handle2.sites] == [r.name for r in handle.sites]
    assert handle2.noise_coeff == 0.5 and not reloaded.training
    with torch.no_grad():
        torch.manual_seed(7)
        assert torch.equal(logits(reloaded, pixels), perturbed)

    handle.detach()
    assert set(model.state_dict()) == keys and not hasattr(model, "metaperturb_phi")
    with torch.no_grad():
        assert torch.equal(logits(model, pixels), reference)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_test_model_has_logits_of_order_one(arch, pixels):
    """Logits of ~1e-30 (features near float32's subnormals) would make the exactness checks here say little."""
    model, _, _ = build(arch)
    model.eval()
    with torch.no_grad():
        assert logits(model, pixels).std() > 1e-2


@pytest.mark.parametrize("arch", ["mobilenet_v2", "cifar_conv4"])
def test_reloaded_weights_get_aligned_memory_of_their_own(arch, tmp_path):
    """transformers 5 leaves loaded weights in the mapped file at 4-byte offsets; oneMKL's SSE4.2/AVX kernels
    round small products differently there (the subprocess test below), so load_perturbed moves them out."""
    model, _, kwargs = build(arch)
    mp_hub.attach(model, MetaPerturb(), **kwargs).save_pretrained(tmp_path)
    reloaded, _ = mp_hub.load_perturbed(tmp_path)
    tensors = [*reloaded.named_parameters(), *reloaded.named_buffers()]
    assert [name for name, t in tensors if t.numel() and t.data_ptr() % ALIGNMENT] == []
    saved, loaded = model.state_dict(), reloaded.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(v, loaded[k]) for k, v in saved.items())


def test_save_reload_is_exact_on_mkl_sse_kernels():
    """The reload test of the two families with 1×1 convolutions on 1×1 maps, with oneMKL restricted to the
    SSE4.2 kernels it takes on CPUs it does not run AVX2/AVX-512 code on (must be set before MKL starts: a new
    process). Their sums depend on the weights' alignment; on builds without MKL the variable changes nothing."""
    test = "tests/test_attach.py::test_detach_restores_outputs_and_save_reload_is_exact"
    env = dict(os.environ, MKL_ENABLE_INSTRUCTIONS="SSE4_2", OMP_NUM_THREADS="1")
    ids = [f"{test}[mobilenet_v2]", f"{test}[efficientnet]"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def _capture_input(module, store):
    return module.register_forward_pre_hook(lambda m, args: store.append(args[0].detach().clone()))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_batched_mc_draws_keep_each_image_whole(arch, pixels):
    """mc_predict repeats the batch at the first site: everything after it (CLS tokens, shortcuts) must follow.
    With κ = 0 every draw is the bare model, so a draw mixing two images' parts would show."""
    model, _, kwargs = build(arch)
    model.eval()
    with torch.no_grad():
        bare = torch.softmax(logits(model, pixels), -1)
    handle = mp_hub.attach(model, MetaPerturb(), **kwargs)
    handle.set_noise_coeff(0.0)
    torch.testing.assert_close(mc_predict(model, pixels, k=3, chunk=3), bare, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet_basic", "resnet_bottleneck", "regnet", "cifar_resnet"])
def test_site_sees_the_residual_sum_before_the_block_relu(arch, pixels):
    model, _, _ = build(arch)
    model.eval()
    handle = mp_hub.attach(model, MetaPerturb())
    record = handle.sites[-1]
    block = model.get_submodule(record.name.rsplit(".", 1)[0])
    block_in, site_in = [], []
    _capture_input(block, block_in)
    _capture_input(handle.site_modules()[record.name], site_in)
    with torch.no_grad():
        logits(model, pixels)
        x = block_in[0]
        if arch == "cifar_resnet":
            by_hand = block.bn2(block.conv2(block.inner_activation(block.bn1(block.conv1(x))))) + block.shortcut(x)
        else:
            by_hand = block.layer(x) + block.shortcut(x)
    assert torch.equal(site_in[0], by_hand)


@pytest.mark.parametrize("arch, prefix", [("vit", 1), ("deit", 2), ("dinov2", 1), ("dinov2_registers", 3)])
def test_vit_prefix_tokens_pass_through(arch, prefix, pixels):
    model, _, _ = build(arch)
    model.eval()
    handle = mp_hub.attach(model, MetaPerturb())
    layer = model.get_submodule(handle.sites[0].name)
    outputs = []
    layer.register_forward_hook(lambda m, a, out: outputs.append(out.clone()))  # torch's hooks see φ's output
    with torch.no_grad():
        with handle.disabled():  # the first site: its input is the same in both passes
            logits(model, pixels)
        logits(model, pixels)
    before, after = outputs
    assert torch.equal(after[:, :prefix], before[:, :prefix])
    assert not torch.equal(after[:, prefix:], before[:, prefix:])
    assert handle.sites[0].spatial == (4, 4)


def test_vit_token_count_that_is_not_a_grid(pixels):
    model, _, _ = build("vit")
    mp_hub.attach(model, MetaPerturb())
    with pytest.raises(AttachError, match="do not form a grid"):
        model.get_submodule("vit.layers.0")(torch.randn(1, 1 + 7, 16))


def test_nothing_matched_lists_candidates():
    with pytest.raises(AttachError, match=r"matched no module.*blocks\.0"):
        mp_hub.attach(ConvNet(seed=None), MetaPerturb(), targets=r"block\.\d+", spatial_norm=32)


def test_unknown_architecture_shows_how_to_pass_targets():
    with pytest.raises(AttachError, match=r'targets=r"encoder\\.layer\\.\\d\+"'):
        mp_hub.attach(ConvNet(seed=None), MetaPerturb())


def test_attaching_twice_is_refused():
    model, _, _ = build("cifar_conv4")
    handle = mp_hub.attach(model, MetaPerturb())
    with pytest.raises(AttachError, match="already attached"):
        mp_hub.attach(model, MetaPerturb())
    handle.detach()
    mp_hub.attach(model, MetaPerturb())  # fine again after detach


def test_unknown_spatial_norm_asks_for_it():
    with pytest.raises(AttachError, match="spatial_norm="):
        mp_hub.attach(ConvNet(seed=None), MetaPerturb(), targets=["blocks.0.1"])


def test_load_is_strict_and_names_the_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    model, _, _ = build("cifar_conv4")
    mp_hub.attach(model, MetaPerturb())
    mp_hub.save_perturbed(model, tmp_path)
    path = tmp_path / "metaperturb.safetensors"
    state = load_file(path)
    assert sum(k.startswith("phi.") for k in state) == 6 and sum(k.startswith("sites.") for k in state) == 12
    state.pop("sites.conv4-blocks-1-activation.running_var")
    state["sites.extra.running_mean"] = torch.zeros(1)
    save_file(state, path)
    with pytest.raises(mp_hub.CheckpointError, match=r"conv4-blocks-1-activation\.running_var.*sites\.extra"):
        mp_hub.load_perturbed(tmp_path)


def test_saved_folder_loads_in_plain_transformers_and_has_card(tmp_path, pixels):
    model, _, _ = build("resnet_basic")
    model.config._name_or_path = "org/tiny-resnet"
    phi = MetaPerturb()
    phi.source_id = "org/metaperturb-phi"
    handle = mp_hub.attach(model, phi, channel_norm=32, inference_mode="mean")
    handle.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert not any(k.startswith("metaperturb") for k in f.keys())
    plain = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    model.eval()
    with torch.no_grad(), handle.disabled():
        assert torch.equal(logits(plain, pixels), logits(model, pixels))
    card = (tmp_path / "README.md").read_text()
    assert "base_model: org/tiny-resnet" in card and "- metaperturb" in card and "- mp_hub" in card
    assert "library_name: mp_hub" in card and "base_model_relation: finetune" in card
    assert "org/metaperturb-phi" in card
    config = json.loads((tmp_path / "metaperturb_config.json").read_text())
    assert config["channel_norm"] == 32 and config["spatial_norm"] == 32 and config["inference_mode"] == "mean"
    assert config["base_model_id"] == "org/tiny-resnet" and config["resolver"] == "resnet"
    assert config["phi_config"]["h_dim"] == 4 and len(config["sites"]) == 3
    _, handle2 = mp_hub.load_perturbed(tmp_path)
    assert handle2.channel_norm == 32 and handle2.inference_mode == "mean"
    assert handle2.phi.source_id == "org/metaperturb-phi" and handle2.base_model_id == "org/tiny-resnet"
