"""mp_hub.perturb: MetaPerturb (φ) at the defaults: its parameters and the authors' initialisation."""

import torch

from mp_hub import MetaPerturb


def test_default_phi_has_82_parameters_and_authors_init():
    torch.manual_seed(0)
    phi = MetaPerturb()
    assert phi.num_parameters() == 82 == phi.config.num_parameters
    assert {n for n, _ in phi.named_children()} == {"noise_generator", "channel_scale"}
    values = torch.cat([p.flatten() for p in phi.parameters()])
    assert 0.005 < values.std().item() < 0.015 and abs(values.mean().item()) < 0.005
