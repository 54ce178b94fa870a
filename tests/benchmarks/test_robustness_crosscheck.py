"""benchmarks/robustness_crosscheck.py: the paired comparison, the noisy model, and mp_hub's side of the attacks
(torchattacks' side needs an environment of its own: docs/robustness.md)."""

import robustness_crosscheck as crosscheck
import torch


def test_the_comparison_pairs_the_images():
    got = crosscheck.compare([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
    assert (got["n10"], got["n01"], got["delta_points"], got["agreement"]) == (1, 1, 0.0, 0.6)
    assert got["se_points"] > 0 and got["within_noise"]
    assert not crosscheck.compare([1] * 20, [0] * 20)["within_noise"]
    same = crosscheck.compare([1, 0, 1], [1, 0, 1])
    assert (same["agreement"], same["se_points"], same["within_noise"]) == (1.0, 0.0, True)


def test_the_noisy_model_draws_noise_on_every_pass_and_the_plain_one_none():
    x = torch.rand(2, 3, 8, 8)
    noisy, plain = crosscheck.SmallCNN(noise=0.5).eval(), crosscheck.SmallCNN().eval()
    assert not torch.equal(noisy(x), noisy(x)) and torch.equal(plain(x), plain(x))


def test_mp_hubs_side_attacks_and_scores_every_row():
    torch.manual_seed(0)
    models = {"plain": crosscheck.SmallCNN().eval(), "noisy": crosscheck.SmallCNN(noise=0.5).eval()}
    settings = {"steps": 2, "eot_samples": 2, "mc_samples": 2, "relative_step": 0.5, "seed": 0}
    got = crosscheck.attack_all(settings, models, torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]), "mp_hub")
    expected = {f"{name} {attack}" for name, attacks in crosscheck.ATTACKS.items() for attack in ("clean", *attacks)}
    assert set(got) == expected and all(len(v) == 4 and set(v) <= {0, 1} for v in got.values())
