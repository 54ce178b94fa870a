"""mp_hub.robustness.attacks: EoT-PGD stays in the ε-ball and in [0, 1], and averages gradients over noise draws."""

import pytest
import torch
from _toy_classifier import toy_pixels

from mp_hub.errors import ConfigError, InvalidInputError
from mp_hub.evaluation import logits_of, sites_inference_mode
from mp_hub.robustness import AttackSpec, eot_pgd, parse_attack_specs
from mp_hub.robustness.attacks import per_image_l2, project


def linear_classifier(seed=0):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(3 * 8 * 8, 3)
    return lambda pixels: layer(pixels.flatten(1))


@pytest.mark.parametrize("text", ["linf:8/255", "l2:0.5"])
@pytest.mark.parametrize("random_start", [True, False])
def test_the_attack_stays_in_the_ball_and_the_pixel_range(text, random_start):
    spec = parse_attack_specs(text)[0]
    pixels, labels = toy_pixels(12, seed=0)
    torch.manual_seed(0)
    adversarial = eot_pgd(linear_classifier(), pixels, labels, spec, steps=5, eot_samples=1, relative_step=0.5,
                          random_start=random_start)  # fmt: skip
    delta = adversarial - pixels
    size = delta.abs().flatten(1).amax(1) if spec.norm == "linf" else per_image_l2(delta).flatten()
    assert (size <= spec.epsilon + 1e-6).all() and (size > 0.5 * spec.epsilon).all()  # it moved, within ε
    assert adversarial.min() >= 0 and adversarial.max() <= 1 and not adversarial.requires_grad


def test_projection_is_the_identity_inside_the_ball_and_shrinks_outside():
    clean = torch.full((2, 3, 4, 4), 0.5)
    spec = AttackSpec("l2", 0.1, "0.1")
    inside = clean + 0.01
    assert torch.equal(project(inside, clean, spec), inside)
    outside = project(clean + torch.rand(2, 3, 4, 4), clean, spec)
    assert torch.allclose(per_image_l2(outside - clean).flatten(), torch.tensor([0.1, 0.1]))


def test_epsilon_zero_returns_the_clean_images():
    pixels, labels = toy_pixels(6, seed=0)
    for spec in parse_attack_specs("linf:0,l2:0"):
        assert torch.equal(eot_pgd(linear_classifier(), pixels, labels, spec, steps=3, eot_samples=2), pixels)


def test_the_attack_raises_the_loss():
    classify = linear_classifier()
    pixels, labels = toy_pixels(24, seed=0)
    adversarial = eot_pgd(classify, pixels, labels, parse_attack_specs("linf:0.1")[0], steps=10, eot_samples=1,
                          relative_step=0.25, random_start=False)  # fmt: skip
    loss = torch.nn.functional.cross_entropy
    assert loss(classify(adversarial), labels) > loss(classify(pixels), labels) + 0.1


def test_eot_draws_matter_only_where_the_model_draws_noise(toy_model):
    """With the sites' noise off, 1 and 10 EoT draws give the same images; with it on (MC), they differ."""
    model, _, pixels, labels = toy_model
    spec = parse_attack_specs("linf:0.1")[0]

    def attack(mode, draws):
        torch.manual_seed(0)
        with sites_inference_mode(model, mode):
            return eot_pgd(lambda x: logits_of(model((x - 0.5) / 0.5)), pixels, labels, spec, steps=4,
                           eot_samples=draws, relative_step=0.25)  # fmt: skip

    for mode in ("off", "mean"):
        assert torch.allclose(attack(mode, 1), attack(mode, 10), atol=1e-6)
    assert not torch.allclose(attack("mc", 1), attack("mc", 10), atol=1e-3)


def test_bad_arguments_are_typed_errors():
    pixels, labels = toy_pixels(4, seed=0)
    spec = parse_attack_specs("l2:0.5")[0]
    classify = linear_classifier()
    for kwargs, error, message in [
        (dict(steps=0), ConfigError, "steps must be a positive int"),
        (dict(eot_samples=1.5), ConfigError, "eot_samples must be a positive int"),
        (dict(relative_step=0.0), ConfigError, "relative_step"),
    ]:
        with pytest.raises(error, match=message):
            eot_pgd(classify, pixels, labels, spec, **kwargs)
    with pytest.raises(ConfigError, match="spec must be an AttackSpec"):
        eot_pgd(classify, pixels, labels, "l2:0.5")
    with pytest.raises(InvalidInputError, match="labels must have shape"):
        eot_pgd(classify, pixels, labels[:2], spec)
    with pytest.raises(InvalidInputError, match="floating-point batch"):
        eot_pgd(classify, (pixels * 255).byte(), labels, spec)
