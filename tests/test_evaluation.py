"""mp_hub.evaluation: MC `predict_proba` (modes, seeding, one pass for a deterministic model, gathering) and
`compute_metrics`."""

import pytest
import torch
from _builders import resnet8

import mp_hub
from mp_hub import MetaPerturb
from mp_hub.errors import ConfigError
from mp_hub.evaluation import compute_metrics, is_stochastic, predict_proba
from mp_hub.metrics import expected_calibration_error


def _batches(n: int = 12, size: int = 8):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 3, size, size, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    return [(x[:8], y[:8]), {"pixel_values": x[8:], "labels": y[8:]}], x, y


def test_predict_proba_modes_and_reproducibility():
    model = resnet8()
    handle = mp_hub.attach(model, MetaPerturb())
    model.train()
    batches, x, y = _batches()
    probs, labels = predict_proba(model, batches, 4, inference_mode="mean")
    assert model.training and handle.inference_mode == "mc"  # training flag and site modes are restored
    model.eval()
    handle.set_inference_mode("mean")
    with torch.no_grad():
        direct = torch.softmax(model(pixel_values=x).logits, -1)
    assert torch.allclose(probs, direct, atol=1e-6) and torch.equal(labels, y)
    handle.set_inference_mode("mc")
    rng = torch.get_rng_state()
    a, _ = predict_proba(model, batches, 3, seed=7)
    assert torch.equal(rng, torch.get_rng_state())  # a seeded evaluation leaves the caller's RNG alone
    b, _ = predict_proba(model, batches, 3, seed=7)
    c, _ = predict_proba(model, batches, 1, seed=7)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.allclose(a.sum(-1), torch.ones(12))


def test_predict_proba_deterministic_model_makes_one_pass_and_gathers():
    model = resnet8()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    assert not is_stochastic(model)
    batches, _, _ = _batches()
    gathered = []
    probs, _ = predict_proba(model, batches, 50, gather=lambda t: gathered.append(t.shape) or t)
    assert len(calls) == 2 and len(gathered) == 4 and probs.shape == (12, 3)
    with pytest.raises(ConfigError):
        predict_proba(model, batches, 0)


def test_compute_metrics_matches_direct():
    probs = torch.softmax(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), -1)
    labels = torch.arange(50) % 4
    metrics = compute_metrics(probs, labels)
    assert metrics["accuracy"] == pytest.approx(float((probs.argmax(-1) == labels).double().mean()))
    assert metrics["nll"] == pytest.approx(float(-probs[torch.arange(50), labels].double().log().mean()))
    assert metrics["ece"] == pytest.approx(expected_calibration_error(probs, labels, 15))
