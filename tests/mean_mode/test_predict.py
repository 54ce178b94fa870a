"""mp_hub.mean_mode.predict: `mc_predict` (the prefix run once, the draws batched, a ViT's CLS token, the MC
average of separate passes, eval mode only) and `mean_predict`."""

import pytest
import torch
from _builders import make_phi

from mp_hub import ConfigError


def tiny_perturbed_model():
    from mp_hub import attach
    from mp_hub.models import model_from_type

    torch.manual_seed(0)
    model = model_from_type("cifar_resnet20", num_labels=3, image_size=8, hidden_sizes=[4, 4, 6]).eval()
    handle = attach(model, make_phi(scale=10.0))
    return model, handle


def test_mc_predict_runs_the_prefix_once_and_averages_the_draws():
    from mp_hub.mean_mode.predict import mc_predict

    model, handle = tiny_perturbed_model()
    x = torch.randn(5, 3, 8, 8)
    calls = []
    model.resnet.stem.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    probs = mc_predict(model, x, k=7, chunk=3)  # passes of 3, 3 and 1 draws
    assert calls == [5, 5, 5] and probs.shape == (5, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(5))
    handle.set_noise_coeff(0.0)  # every multiplier is 1: each draw is the bare model
    with torch.no_grad(), handle.disabled():
        bare = torch.softmax(model(x).logits, -1)
    assert torch.allclose(mc_predict(model, x, k=4), bare, atol=1e-6)
    # one draw per pass (the default at large batches): the first site's input is used as it is, not copied
    from mp_hub.site import InputRepeat

    feature, noise = torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8)
    assert all(a is b for a, b in zip(InputRepeat(1).apply(feature, noise), (feature, noise)))
    assert torch.equal(InputRepeat(2).apply(feature, None)[0], torch.cat([feature, feature]))


def test_mc_predict_batches_the_draws_of_a_vit_with_a_cls_token():
    from transformers import ViTConfig, ViTForImageClassification

    from mp_hub import attach
    from mp_hub.mean_mode.predict import mc_predict

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                       image_size=16, patch_size=4, num_labels=3)  # fmt: skip
    model = ViTForImageClassification(config).eval()
    handle = attach(model, make_phi(scale=10.0))
    x = torch.randn(5, 3, 16, 16)
    probs = mc_predict(model, x, k=7, chunk=3)  # the first site repeats the patch tokens: the CLS token too
    assert probs.shape == (5, 3) and torch.allclose(probs.sum(-1), torch.ones(5))
    handle.set_noise_coeff(0.0)  # each draw is the bare model: image b's CLS token stays with image b's patches
    with torch.no_grad(), handle.disabled():
        bare = torch.softmax(model(x).logits, -1)
    assert torch.allclose(mc_predict(model, x, k=4, chunk=4), bare, atol=1e-6)


def test_mc_predict_matches_separate_passes_in_distribution():
    from mp_hub.mean_mode.predict import mc_predict, mean_predict

    model, handle = tiny_perturbed_model()
    x = torch.randn(4, 3, 8, 8)
    torch.manual_seed(3)
    batched = mc_predict(model, x, k=400)
    with torch.no_grad():
        loop = torch.stack([torch.softmax(model(x).logits, -1) for _ in range(400)]).mean(0)
    assert (batched - loop).abs().max() < 0.03
    assert (mean_predict(model, x) - loop).abs().max() < 0.03
    assert handle.inference_mode == "mc"  # mean_predict restored the sites' modes


def test_mc_predict_refuses_training_mode():
    from mp_hub.mean_mode.predict import mc_predict

    model, _ = tiny_perturbed_model()
    with pytest.raises(ConfigError, match="eval"):
        mc_predict(model.train(), torch.randn(2, 3, 8, 8), k=2)
