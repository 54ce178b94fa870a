"""The ReLU after a ResNet site, fused into the site: identical outputs and gradients, restored by detach."""

import copy

import pytest
import torch
from torch import nn
from transformers import ResNetConfig, ResNetForImageClassification

import mp_hub
from mp_hub import MetaPerturb, kernels
from mp_hub.attach import find_handle
from mp_hub.mean_mode.predict import mc_predict
from mp_hub.model_edits import edited_forward
from mp_hub.models import CifarResNetConfig, CifarResNetForImageClassification

BUILDERS = {
    "cifar_resnet": lambda: CifarResNetForImageClassification(
        CifarResNetConfig(depth=8, hidden_sizes=[4, 8, 8], num_labels=3)
    ),
    "hf_resnet": lambda: ResNetForImageClassification(
        ResNetConfig(
            num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3
        )
    ),
}
BACKENDS = ["eager"] + (["fused"] if kernels.fused_available() else [])


def _phi(seed=0) -> MetaPerturb:
    torch.manual_seed(seed)
    phi = MetaPerturb()
    with torch.no_grad():
        for p in phi.parameters():
            p.mul_(25)  # μ spreads over a few units: the ReLU masks are mixed
    return phi


def _pair(name):
    """(fused model, its handle, unfused copy, its handle, bare copy)."""
    torch.manual_seed(0)
    bare = BUILDERS[name]()
    fused, unfused = copy.deepcopy(bare), copy.deepcopy(bare)
    handle = mp_hub.attach(fused, _phi(), spatial_norm=32)
    reference = mp_hub.attach(unfused, _phi(), spatial_norm=32, fuse_relu=False)
    return fused, handle, unfused, reference, bare


@pytest.fixture(params=BACKENDS)
def backend(request):
    kernels.set_default_backend(request.param)
    yield request.param
    kernels.set_default_backend("auto")


def _run(model, x, seed, train=True):
    model.train(train)
    torch.manual_seed(seed)
    return model(pixel_values=x).logits


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_fused_relu_gives_the_same_outputs_and_gradients(name, backend):
    fused, handle, unfused, reference, _ = _pair(name)
    assert len(handle.fused_relus) == len(handle.sites) > 0 and not reference.fused_relus
    assert all(site.fused_relu for site in handle.site_list())
    x = torch.randn(4, 3, 32, 32)
    out_f, out_u = _run(fused, x, 7), _run(unfused, x, 7)
    torch.testing.assert_close(out_f, out_u, rtol=0, atol=0)
    out_f.square().sum().backward()
    out_u.square().sum().backward()
    for (n, pf), pu in zip(fused.named_parameters(), unfused.parameters()):
        if pf.grad is not None or pu.grad is not None:
            torch.testing.assert_close(pf.grad, pu.grad, rtol=1e-6, atol=1e-7, msg=n)
    # running statistics of the sites and the BatchNorms moved identically
    for (k, vf), vu in zip(fused.state_dict().items(), unfused.state_dict().values()):
        torch.testing.assert_close(vf, vu, rtol=0, atol=0, msg=k)
    for mode in ("mean", "mc"):
        handle.set_inference_mode(mode), reference.set_inference_mode(mode)
        torch.testing.assert_close(_run(fused, x, 3, False), _run(unfused, x, 3, False), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_disabled_off_and_detached_models_are_the_bare_model(name):
    fused, handle, _, _, bare = _pair(name)
    x = torch.randn(2, 3, 32, 32)
    want = _run(bare, x, 0, train=False)
    with handle.disabled():  # the site does not run: the ReLU module must rectify by itself
        torch.testing.assert_close(_run(fused, x, 0, train=False), want, rtol=0, atol=0)
    handle.set_inference_mode("off")
    torch.testing.assert_close(_run(fused, x, 0, train=False), want, rtol=0, atol=0)
    relus = handle.fused_relus
    handle.detach()
    assert all("forward" not in relu.__dict__ for relu in relus)
    assert all(type(relu) is nn.ReLU for relu in relus)
    torch.testing.assert_close(_run(fused, x, 0, train=False), want, rtol=0, atol=0)


def test_a_deep_copy_keeps_its_own_fusion():
    fused = _pair("cifar_resnet")[0]
    clone = copy.deepcopy(fused)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_run(clone, x, 5), _run(fused, x, 5), rtol=0, atol=0)
    clone_handle = find_handle(clone)
    assert len(clone_handle.fused_relus) == len(clone_handle.sites) > 0
    for relu in clone_handle.fused_relus:  # bound to the copy's own module, site and hook
        chain = edited_forward(relu)
        assert chain.module is relu and relu in list(clone.modules())
        (site_hook,) = [wrapper.hook for wrapper in chain.wrappers.values()]
        assert chain.replacement.hook is site_hook and site_hook.site in list(clone.modules())


def test_mc_predict_and_save_load_with_fused_relu(tmp_path):
    fused, handle, unfused, reference, _ = _pair("cifar_resnet")
    x = torch.randn(3, 3, 32, 32)
    fused.eval(), unfused.eval()
    torch.manual_seed(1)
    a = mc_predict(fused, x, 4)
    torch.manual_seed(1)
    b = mc_predict(unfused, x, 4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    handle.save_pretrained(tmp_path)
    loaded, loaded_handle = mp_hub.load_perturbed(tmp_path)
    assert len(loaded_handle.fused_relus) == len(loaded_handle.sites)
    torch.testing.assert_close(_run(loaded, x, 2, False), _run(fused, x, 2, False), rtol=0, atol=0)
