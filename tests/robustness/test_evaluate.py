"""mp_hub.robustness.evaluate: the issue's sanity checks on a tiny trained model with φ (MC and mean mode), the
result keys, the pixel-space normalisation, and the state the evaluation leaves behind."""

import pytest
import torch
from _builders import ConvNet
from _toy_classifier import toy_pixels

from mp_hub.errors import ConfigError, InvalidInputError
from mp_hub.robustness import evaluate_adversarial, parse_attack_specs

FAST = dict(steps=10, eot_samples=3, mc_samples=6, relative_step=0.25)  # 2.5 ε of travel in 10 steps


def batches_of(pixels, labels, size=24, mean=0.5, std=0.5):
    return [((pixels[i : i + size] - mean) / std, labels[i : i + size]) for i in range(0, len(labels), size)]


@pytest.mark.parametrize("mode", ["mc", "mean"])
def test_the_attack_lowers_accuracy(toy_model, mode):
    model, _, pixels, labels = toy_model
    report = evaluate_adversarial(model, batches_of(pixels, labels), parse_attack_specs("linf:0.1,l2:1"),
                                  inference_mode=mode, **FAST)  # fmt: skip
    assert report.clean_accuracy >= 0.9 and report.stochastic == (mode == "mc")
    assert all(accuracy <= report.clean_accuracy - 0.3 for accuracy in report.accuracy.values()), report


def test_epsilon_zero_gives_the_clean_accuracy_under_the_same_noise(toy_model):
    model, _, _, _ = toy_model
    pixels, labels = toy_pixels(48, seed=3, noise=0.5)  # harder images: MC accuracy below 1, noise-dependent
    reports = [evaluate_adversarial(model, batches_of(pixels, labels), parse_attack_specs("linf:0,l2:0"),
                                    inference_mode="mc", seed=seed, **FAST) for seed in (0, 1, 2)]  # fmt: skip
    assert any(r.clean_accuracy < 1 for r in reports)
    for report in reports:
        assert list(report.accuracy.values()) == [report.clean_accuracy] * 2


@pytest.mark.parametrize("mode", ["mc", "mean"])
def test_more_steps_never_raise_the_attacked_accuracy_beyond_noise(toy_model, mode):
    model, _, pixels, labels = toy_model
    specs = parse_attack_specs("linf:0.1,l2:1")
    runs = [evaluate_adversarial(model, batches_of(pixels, labels), specs, inference_mode=mode, **{**FAST, "steps": s})
            for s in (2, 5, 10, 20)]  # fmt: skip
    for spec in specs:
        accuracy = [run.accuracy[spec] for run in runs]
        assert accuracy[-1] < accuracy[0], accuracy  # the steps do something
        assert all(later <= earlier + 2 / 48 for earlier, later in zip(accuracy, accuracy[1:])), (spec, accuracy)


def test_with_the_noise_off_one_and_ten_eot_draws_agree(toy_model):
    model, handle, pixels, labels = toy_model
    specs = parse_attack_specs("linf:0.05,l2:0.7")
    one, ten = (evaluate_adversarial(model, batches_of(pixels, labels), specs, inference_mode="off",
                                     **{**FAST, "eot_samples": k}) for k in (1, 10))  # fmt: skip
    assert one.accuracy == ten.accuracy and one.clean_accuracy == ten.clean_accuracy
    assert not ten.stochastic and ten.eot_samples == ten.mc_samples == 1  # a deterministic model: plain PGD


def test_results_keys_and_the_first_images_only(toy_model):
    model, _, pixels, labels = toy_model
    specs = parse_attack_specs("linf:2/255,l2:0.5")
    report = evaluate_adversarial(model, batches_of(pixels, labels), specs, max_samples=30, inference_mode="mean",
                                  **{**FAST, "steps": 1})  # fmt: skip
    assert report.samples == 30
    assert report.metrics() == {
        "eval_adv_clean_accuracy": report.clean_accuracy,
        "eval_adv_linf_2_255_accuracy": report.accuracy[specs[0]],
        "eval_adv_l2_0.5_accuracy": report.accuracy[specs[1]],
        "eval_adv_samples": 30,
    }
    assert set(report.metrics("eval_mean_mode_adv_")) == {k.replace("eval_", "eval_mean_mode_", 1)
                                                         for k in report.metrics()}  # fmt: skip


def test_epsilon_is_in_pixel_space_whatever_the_normalisation(toy_model):
    """The same pixels normalised two ways, each with its own model input layer: the same attack, the same result."""
    model, _, pixels, labels = toy_model
    spec = parse_attack_specs("linf:0.1")
    plain = evaluate_adversarial(model, batches_of(pixels, labels), spec, inference_mode="mean", **FAST)
    mean, std = (0.2, 0.3, 0.4), (0.25, 0.2, 0.3)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    class Renormalized(torch.nn.Module):  # takes (p - mean) / std, hands the model (p - 0.5) / 0.5
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner((x * s + m - 0.5) / 0.5)

    other = evaluate_adversarial(Renormalized(), batches_of(pixels, labels, mean=m, std=s), spec,
                                 inference_mode="mean", pixel_mean=mean, pixel_std=std, **FAST)  # fmt: skip
    assert abs(other.accuracy[spec[0]] - plain.accuracy[spec[0]]) <= 1 / 48
    with pytest.raises(InvalidInputError, match="span .* not \\[0, 1\\]: pass the normalisation"):
        evaluate_adversarial(model, batches_of(pixels, labels, mean=m, std=s), spec, **FAST)


def test_the_model_its_sites_and_the_callers_rng_are_left_as_they_were(toy_model):
    model, handle, pixels, labels = toy_model
    model.train()
    handle.set_inference_mode("mean")
    before = torch.random.get_rng_state()
    try:
        evaluate_adversarial(model, batches_of(pixels[:6], labels[:6]), parse_attack_specs("l2:0.5"),
                             inference_mode="mc", **{**FAST, "steps": 1})  # fmt: skip
        assert model.training and all(site.inference_mode == "mean" for site in handle.site_list())
        assert torch.equal(torch.random.get_rng_state(), before)
    finally:
        model.eval()
        handle.set_inference_mode("mc")


def test_a_plain_model_is_attacked_with_plain_pgd():
    pixels, labels = toy_pixels(6, seed=0)
    report = evaluate_adversarial(ConvNet(widths=(4,)).eval(), batches_of(pixels, labels),
                                  parse_attack_specs("linf:8/255"), **{**FAST, "steps": 2})  # fmt: skip
    assert not report.stochastic and report.samples == 6 and report.inference_mode is None


def test_bad_arguments_are_typed_errors(toy_model):
    model, _, pixels, labels = toy_model
    good = batches_of(pixels[:4], labels[:4])
    spec = parse_attack_specs("linf:8/255")
    for kwargs, error, message in [
        (dict(specs=[]), ConfigError, "non-empty list of AttackSpec"),
        (dict(specs=["linf:8/255"]), ConfigError, "non-empty list of AttackSpec"),
        (dict(mc_samples=0), ConfigError, "mc_samples must be a positive int"),
        (dict(max_samples=0), ConfigError, "max_samples must be a positive int"),
        (dict(seed=0.5), ConfigError, "seed must be an int"),
        (dict(pixel_std=(0.5, 0.0, 0.5)), ConfigError, "std > 0"),
        (dict(pixel_mean=(0.5,)), ConfigError, "one value per channel"),
        (dict(inference_mode="sampled"), ConfigError, "inference_mode must be one of"),
        (dict(batches=[]), InvalidInputError, "got no batches"),
        (dict(batches=[(pixels[:2, 0], labels[:2])]), InvalidInputError, "pixel_values must be"),
    ]:
        arguments = {"batches": good, "specs": spec, **kwargs}
        with pytest.raises(error, match=message):
            evaluate_adversarial(model, arguments.pop("batches"), arguments.pop("specs"), **arguments)
