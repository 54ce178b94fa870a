"""mp_hub.regularizers.placement: a regularizer (DropBlock) at φ's sites, placed and removed."""

import pytest
import torch
from _builders import resnet8

import mp_hub
from mp_hub import MetaPerturb
from mp_hub.errors import AttachError
from mp_hub.models import model_from_type
from mp_hub.regularizers import DropBlock2d, attach_regularizer, find_sites, set_drop_prob


def _tiny_vit():
    torch.manual_seed(0)
    return model_from_type(
        "vit", 3, 16, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16, patch_size=4
    )


def test_find_sites_are_attach_sites():
    model = resnet8()
    names = [s.name for s in find_sites(model).sites]
    handle = mp_hub.attach(model, MetaPerturb())
    assert names == [r.name for r in handle.sites]


@pytest.mark.parametrize("build, size", [(resnet8, 8), (_tiny_vit, 16)])
def test_attach_regularizer_dropblock(build, size):
    model = build()
    keys = set(model.state_dict())
    x = torch.randn(4, 3, size, size)
    model.eval()
    with torch.no_grad():
        before = model(pixel_values=x).logits
    placed = attach_regularizer(model, lambda spec: DropBlock2d(0.0, block_size=7))
    assert len(placed) == len(find_sites(model).sites) and set(model.state_dict()) == keys
    assert set_drop_prob(model, 0.5) == len(placed)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, before)  # DropBlock is the identity in eval mode
        model.train()
        torch.manual_seed(0)
        dropped = model(pixel_values=x).logits
        model.eval()
    with pytest.raises(AttachError, match="already placed"):
        attach_regularizer(model, lambda spec: DropBlock2d(0.1))
    placed.remove()
    model.train()
    with torch.no_grad():
        torch.manual_seed(0)
        plain = model(pixel_values=x).logits
    assert not torch.equal(dropped, plain)  # it did drop blocks in training mode
    assert not hasattr(model, "regularizer_sites")


def test_attach_regularizer_needs_sites():
    model = model_from_type("poolformer", 3, 16, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])
    with pytest.raises(AttachError, match="no resolver"):
        attach_regularizer(model, lambda spec: DropBlock2d(0.1))
