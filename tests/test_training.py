"""mp_hub.training: tasks spread over processes, the meta-step against the reference algorithm, the sync check."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mp_hub import MetaPerturb
from mp_hub.data.loading import ImageTensors
from mp_hub.data.tasks import TaskData, split_tasks
from mp_hub.errors import DistributedError
from mp_hub.training import MetaTrainer, TaskLearner, assign_tasks, check_in_sync, seeded_phi
from mp_hub.training import distributed as dist_module


def test_tasks_are_spread_in_contiguous_blocks():
    assert [list(assign_tasks(10, 4, r)) for r in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert [list(assign_tasks(4, 2, r)) for r in range(2)] == [[0, 1], [2, 3]]
    with pytest.raises(DistributedError, match="3 processes for 2 tasks"):
        assign_tasks(2, 3, 0)


# --- the algorithm ------------------------------------------------------------------------------------------


def _learners(phi: MetaPerturb, seed: int = 0) -> list[TaskLearner]:
    gen = torch.Generator().manual_seed(1)
    learners = []
    for spec in split_tasks(np.repeat(np.arange(4), 8), seed=seed, num_tasks=2, split_scheme="disjoint"):
        images = torch.randint(0, 256, (32, 3, 8, 8), generator=gen, dtype=torch.uint8)
        data = ImageTensors(images, torch.arange(32) % spec.num_labels)
        data = TaskData(spec, data.subset(spec.train_rows), data.subset(spec.valid_rows), batch_size=8, seed=seed)
        learners.append(
            TaskLearner.build(
                data, phi, model_type="cifar_resnet20", image_size=8, learning_rate=1e-3, weight_decay=5e-4,
                seed=seed, device=torch.device("cpu"),
            )
        )  # fmt: skip
    return learners


def test_meta_step_is_the_reference_algorithm():
    """Against a transcription of the authors' train_step (loss.backward, zero_grad, BN eval, mean of ∇φ)."""
    phi = seeded_phi(0)
    trainer = MetaTrainer(phi, _learners(phi), 2, learning_rate=1e-3, weight_decay=5e-4)
    ref_phi = seeded_phi(0)
    ref_learners = _learners(ref_phi)
    ref_phi_opt = torch.optim.Adam(ref_phi.parameters(), lr=1e-3, weight_decay=5e-4)
    for _ in range(3):
        trainer.step()
        grads = [torch.zeros_like(p) for p in ref_phi.parameters()]
        for learner in ref_learners:
            with learner.own_noise():
                learner.model.train()
                x, y = learner.data.next_batch("train")
                loss = F.cross_entropy(learner.model(pixel_values=x).logits, y)
                learner.optimizer.zero_grad()
                loss.backward()
                learner.optimizer.step()
                bn_stats = [
                    m.running_mean.clone() for m in learner.model.modules() if isinstance(m, torch.nn.BatchNorm2d)
                ]
                site = next(iter(learner.handle.site_modules().values()))
                site_stats = site.running_mean.clone()
                for m in learner.model.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.eval()
                x, y = learner.data.next_batch("valid")
                loss = F.cross_entropy(learner.model(pixel_values=x).logits, y)
                ref_phi_opt.zero_grad()
                loss.backward()
                grads = [g + p.grad for g, p in zip(grads, ref_phi.parameters())]
            after = [m.running_mean for m in learner.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            assert all(torch.equal(a, b) for a, b in zip(bn_stats, after))  # BN frozen on the valid batch
            assert site.training and not torch.equal(site_stats, site.running_mean)  # the sites keep training
        for p, g in zip(ref_phi.parameters(), grads):
            p.grad = g / 2
        ref_phi_opt.step()
    for (name, a), b in zip(phi.state_dict().items(), ref_phi.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=name)
    for learner, ref in zip(trainer.learners, ref_learners):
        for a, b in zip(learner.theta, ref.theta):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert not torch.equal(phi.channel_scale.fc.weight, seeded_phi(0).channel_scale.fc.weight)


def test_sync_check_raises_on_divergence(monkeypatch):
    phi = seeded_phi(0)
    check_in_sync(phi, step=1)  # one process: always in sync
    monkeypatch.setattr(dist_module, "gather", lambda t: torch.cat([t, t + 1]))
    with pytest.raises(DistributedError, match="diverged across processes at step 7"):
        check_in_sync(phi, step=7)
