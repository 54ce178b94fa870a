"""mp_hub.models: CIFAR source architectures as transformers models (shapes, params, Auto round trips, sites)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from mp_hub.errors import ConfigError
from mp_hub.models import (
    SHORT_NAMES,
    CifarConv4Config,
    CifarConv4ForImageClassification,
    CifarResNetConfig,
    CifarResNetForImageClassification,
    CifarResNetShortcut,
    CifarVggConfig,
    CifarVggForImageClassification,
    model_from_type,
)

# small widths keep the whole file fast; the default architectures are covered by the parameter-count tests
SMALL = {
    "cifar_resnet": lambda n: CifarResNetForImageClassification(CifarResNetConfig(depth=20, num_labels=n)),
    "cifar_vgg": lambda n: CifarVggForImageClassification(
        CifarVggConfig(hidden_sizes=[8, 8, 16, 16, 16, 16, 32, 32], num_labels=n)
    ),
    "cifar_conv4": lambda n: CifarConv4ForImageClassification(CifarConv4Config(hidden_size=8, num_labels=n)),
}


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_resnet20_parameter_count():
    model = CifarResNetForImageClassification(CifarResNetConfig(depth=20, num_labels=10))
    assert _n_params(model) == 269_722
    assert model.config.image_size == 32 and model.config.num_channels == 3
    assert model.main_input_name == "pixel_values"


def test_default_vgg9_and_conv4_parameter_counts():
    # the authors' VGG9: 8 convs (with bias) 64,128,256,256,512,512,512,512 + BN, then Linear(512, n) at 32×32
    convs = [3, 64, 128, 256, 256, 512, 512, 512, 512]
    expected = sum(9 * a * b + b + 2 * b for a, b in zip(convs[:-1], convs[1:])) + 512 * 10 + 10
    assert _n_params(model_from_type("cifar_vgg9", 10)) == expected
    # Conv4 (64 channels): 4 × (conv with bias + BN) then Linear(64·2·2, n)
    expected = (9 * 3 * 64 + 64 + 128) + 3 * (9 * 64 * 64 + 64 + 128) + 256 * 10 + 10
    assert _n_params(model_from_type("cifar_conv4", 10)) == expected


@pytest.mark.parametrize("depth", [21, 18, 0, "20"])
def test_resnet_depth_validation(depth):
    with pytest.raises(ConfigError, match="20, 32, 44, 56"):
        CifarResNetConfig(depth=depth)


def test_resnet_depths_give_the_right_number_of_blocks():
    for depth in (20, 32, 44, 56):
        model = model_from_type(f"cifar_resnet{depth}", 3)
        assert [len(stage.blocks) for stage in model.resnet.stages] == [(depth - 2) // 6] * 3
        n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        assert n_conv + 1 == depth  # convs + the linear classifier


def test_image_too_small_for_pools_is_a_config_error():
    with pytest.raises(ConfigError, match="image_size"):
        CifarVggConfig(image_size=28)
    with pytest.raises(ConfigError, match="image_size"):
        CifarConv4Config(image_size=8)


@pytest.mark.parametrize("family", sorted(SMALL))
def test_forward_shapes_and_loss(family):
    torch.manual_seed(0)
    model = SMALL[family](5)
    x = torch.randn(3, 3, 32, 32)
    labels = torch.tensor([0, 4, 2])
    out = model(pixel_values=x, labels=labels, output_hidden_states=True)
    assert isinstance(out, ImageClassifierOutputWithNoAttention)
    assert out.logits.shape == (3, 5)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    assert out.hidden_states and all(h.shape[0] == 3 for h in out.hidden_states)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    no_labels = model(x)
    assert no_labels.loss is None and no_labels.hidden_states is None
    as_tuple = model(x, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[1].shape == (3, 5)


def test_grayscale_and_other_sizes():
    model = model_from_type("cifar_resnet20", 2, image_size=28, num_channels=1)
    assert model.config.image_size == 28 and model.config.num_channels == 1
    assert model(torch.randn(2, 1, 28, 28)).logits.shape == (2, 2)
    model = model_from_type("cifar_conv4", 2, image_size=28, num_channels=1, hidden_size=8)
    assert model(torch.randn(2, 1, 28, 28)).logits.shape == (2, 2)


@pytest.mark.parametrize("family", sorted(SMALL))
def test_save_and_auto_load_round_trip(family, tmp_path):
    torch.manual_seed(0)
    model = SMALL[family](4)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    model(x)  # move the BN running stats away from their init
    model.eval()
    model.save_pretrained(tmp_path)

    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is type(model.config) and config.model_type == family
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    base = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(base(x).pooler_output, getattr(model, model.base_model_prefix)(x).pooler_output)


def test_resnet_block_names_and_parameter_free_shortcuts():
    model = model_from_type("cifar_resnet20", 10)
    names = dict(model.named_modules())
    for i in range(3):
        for j in range(3):
            block = names[f"resnet.stages.{i}.blocks.{j}"]
            assert isinstance(block.activation, torch.nn.ReLU) and not block.activation.inplace
            assert block.inner_activation is not block.activation
    assert isinstance(names["resnet.stages.1.blocks.0.shortcut"], CifarResNetShortcut)
    assert isinstance(names["resnet.stages.0.blocks.0.shortcut"], torch.nn.Identity)
    assert not any(True for _ in names["resnet.stages.2.blocks.0.shortcut"].parameters())


@pytest.mark.parametrize("block_name", ["resnet.stages.0.blocks.1", "resnet.stages.1.blocks.0"])
def test_pre_hook_on_block_activation_sees_the_residual_sum(block_name):
    torch.manual_seed(0)
    model = model_from_type("cifar_resnet20", 10).eval()
    block = model.get_submodule(block_name)
    captured = {}
    handles = [
        block.register_forward_pre_hook(lambda m, args: captured.__setitem__("block_in", args[0].clone())),
        block.activation.register_forward_pre_hook(lambda m, args: captured.__setitem__("sum", args[0].clone())),
        block.register_forward_hook(lambda m, args, out: captured.__setitem__("block_out", out.clone())),
    ]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for handle in handles:
        handle.remove()

    x = captured["block_in"]
    with torch.no_grad():
        branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    if block_name.endswith("stages.1.blocks.0"):
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))  # 16 → 32 channels, stride 2
    else:
        shortcut = x
    torch.testing.assert_close(captured["sum"], branch + shortcut, rtol=0, atol=0)
    assert captured["sum"].min() < 0  # really pre-ReLU
    torch.testing.assert_close(captured["block_out"], torch.relu(captured["sum"]), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["cifar_vgg", "cifar_conv4"])
def test_conv_block_activation_sees_the_bn_output(family):
    model = SMALL[family](3).eval()
    block = getattr(model, model.base_model_prefix).blocks[1]
    captured = {}
    block.register_forward_pre_hook(lambda m, args: captured.__setitem__("in", args[0].clone()))
    block.activation.register_forward_pre_hook(lambda m, args: captured.__setitem__("pre", args[0].clone()))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        expected = block.bn(block.conv(captured["in"]))
    torch.testing.assert_close(captured["pre"], expected, rtol=0, atol=0)


def test_vgg_layout_knobs():
    # "max-pool after pairs" layout: 64,64 | 128,128 | 256,256 | 512,512 (scaled down here)
    config = CifarVggConfig(hidden_sizes=[4, 4, 8, 8, 8, 8, 16, 16], pool_after=[1, 3, 5, 7], num_labels=3)
    model = CifarVggForImageClassification(config)
    assert model.classifier.in_features == 16 * 2 * 2
    assert sum(isinstance(b.pool, torch.nn.MaxPool2d) for b in model.vgg.blocks) == 4
    assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 3)


@pytest.mark.parametrize("name", sorted(SHORT_NAMES))
def test_model_from_type_short_names(name):
    kwargs = {"hidden_sizes": [8] * 8} if name == "cifar_vgg9" else {}
    model = model_from_type(name, 7, **kwargs)
    assert model.config.num_labels == 7 and model.config.image_size == 32
    expected_type = {"cifar_vgg9": "cifar_vgg", "cifar_conv4": "cifar_conv4"}.get(name, "cifar_resnet")
    assert model.config.model_type == expected_type
    if name.startswith("cifar_resnet"):
        assert model.config.depth == int(name.removeprefix("cifar_resnet"))
    assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 7)


def test_model_from_type_transformers_fallback():
    model = model_from_type(
        "vit",
        4,
        image_size=16,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        patch_size=8,
    )
    assert model.config.model_type == "vit" and model.config.image_size == 16
    assert model(pixel_values=torch.randn(1, 3, 16, 16)).logits.shape == (1, 4)
    assert isinstance(model_from_type("cifar_resnet", 3, depth=32), CifarResNetForImageClassification)


def test_model_from_type_unknown_name():
    with pytest.raises(ConfigError, match="cifar_resnet20.*cifar_vgg9.*cifar_conv4"):
        model_from_type("not_a_model", 3)


def test_registration_is_idempotent():
    from mp_hub import models

    models._register()
    models._register()
    assert isinstance(AutoConfig.for_model("cifar_conv4"), CifarConv4Config)
