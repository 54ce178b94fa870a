"""mp_hub.training: tasks spread over processes (and resumed under any spread), the exact task sum, the meta-step
against the reference algorithm, the sync check, φ's learning-rate schedule."""

import functools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mp_hub import MetaPerturb
from mp_hub.checkpointing import load_meta_train_checkpoint, save_meta_train_checkpoint
from mp_hub.data.loading import ImageTensors
from mp_hub.data.tasks import TaskData, split_tasks
from mp_hub.errors import DistributedError
from mp_hub.schedules import build_lr_scheduler
from mp_hub.training import MetaTrainer, TaskLearner, assign_tasks, check_in_sync, exact_task_sum, seeded_phi
from mp_hub.training import distributed as dist_module


def test_tasks_are_spread_evenly_in_contiguous_blocks():
    assert [list(assign_tasks(10, 8, r)) for r in range(8)] == [[0, 1], [2, 3], [4], [5], [6], [7], [8], [9]]
    assert [list(assign_tasks(10, 4, r)) for r in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert [list(assign_tasks(4, 2, r)) for r in range(2)] == [[0, 1], [2, 3]]
    for num_tasks in range(1, 13):
        for world_size in range(1, num_tasks + 1):
            blocks = [assign_tasks(num_tasks, world_size, r) for r in range(world_size)]
            assert [t for block in blocks for t in block] == list(range(num_tasks))  # each task once, in order
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1 and min(map(len, blocks)) >= 1
    with pytest.raises(DistributedError, match="3 processes for 2 tasks"):
        assign_tasks(2, 3, 0)
    with pytest.raises(DistributedError, match="process 2 of 2"):
        assign_tasks(4, 2, 2)


def test_task_sum_is_bit_equal_for_any_world_size(monkeypatch):
    """Each process fills its tasks' rows; the all-reduce (simulated: the processes' matrices added in rank order)
    and the row sum in task order give the 1-process sum bit for bit, for 10 tasks on 1 to 10 processes."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(10, 86, generator=gen) * 10.0 ** torch.randint(-6, 6, (10, 1), generator=gen)
    single = exact_task_sum(rows)
    assert not torch.equal(single, rows[:5].sum(0) + rows[5:].sum(0))  # rounding does depend on the order
    for world_size in range(2, 11):
        per_process = [torch.zeros_like(rows) for _ in range(world_size)]
        for rank, local in enumerate(per_process):
            for t in assign_tasks(10, world_size, rank):
                local[t] = rows[t]
        all_reduced = sum(local.reshape(-1) for local in per_process)
        monkeypatch.setattr(dist_module, "reduce", lambda flat, reduction, total=all_reduced: total)
        assert torch.equal(exact_task_sum(per_process[0]), single), world_size


# --- the algorithm ------------------------------------------------------------------------------------------


def _learners(phi: MetaPerturb, seed: int = 0, num_tasks: int = 2) -> list[TaskLearner]:
    """`num_tasks` class-disjoint tasks of 2 classes × 8 random 8×8 images each, a learner per task."""
    gen = torch.Generator().manual_seed(1)
    learners = []
    labels = np.repeat(np.arange(2 * num_tasks), 8)
    for spec in split_tasks(labels, seed=seed, num_tasks=num_tasks, split_scheme="disjoint"):
        images = torch.randint(0, 256, (len(labels), 3, 8, 8), generator=gen, dtype=torch.uint8)
        data = ImageTensors(images, torch.arange(len(labels)) % spec.num_labels)
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


def test_a_checkpoint_resumes_under_any_assignment_of_tasks(tmp_path):
    """One file per task: the processes of another world size (3 for 4 tasks: blocks 2, 1, 1) each restore exactly
    their own tasks from a checkpoint that one process wrote (the assignment is not part of a checkpoint), and a
    checkpoint from before φ's schedule existed resumes with the constant one."""
    phi = seeded_phi(0)
    trainer = MetaTrainer(phi, _learners(phi, num_tasks=4), 4, learning_rate=1e-3, weight_decay=5e-4)
    trainer.step()
    run = {"num_tasks": 4}
    folder = save_meta_train_checkpoint(
        tmp_path, 1, trainer=trainer, state=dict(run=run, history=[], wall_time_s=0.0), is_main=True,
        wait_for_everyone=lambda: None,
    )  # fmt: skip
    fresh_phi = seeded_phi(1)
    fresh_learners = _learners(fresh_phi, num_tasks=4, seed=1)  # other inits, data orders and noise
    for rank in range(3):
        learners = [fresh_learners[t] for t in assign_tasks(4, 3, rank)]
        fresh = MetaTrainer(fresh_phi, learners, 4, learning_rate=1e-3, weight_decay=5e-4)
        # the run of today: φ's schedule (None: constant) is absent from the older checkpoint's run, and matches
        assert load_meta_train_checkpoint(folder, trainer=fresh, run={**run, "lr_schedule": None})["step"] == 1
        assert all(torch.equal(a, b) for a, b in zip(phi.state_dict().values(), fresh_phi.state_dict().values()))
        for learner in learners:
            saved, restored = trainer.learners[learner.index].state_dict(phi), learner.state_dict(fresh_phi)
            assert saved["model"].keys() == restored["model"].keys()
            assert all(torch.equal(saved["model"][k], restored["model"][k]) for k in saved["model"])
            assert torch.equal(saved["noise"], restored["noise"]), (rank, learner.index)


def test_phi_lr_schedule_steps_with_phi_and_is_rebuilt_at_resume():
    schedule = functools.partial(build_lr_scheduler, scheduler_type="linear", num_training_steps=4, num_warmup_steps=1)
    trainer = MetaTrainer(seeded_phi(0), [], 1, learning_rate=1e-3, weight_decay=5e-4, lr_scheduler=schedule)
    rates = [trainer.optimizer.param_groups[0]["lr"]]
    for _ in range(3):
        trainer.step()
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.0, 1e-3, 2e-3 / 3, 1e-3 / 3])
    resumed = MetaTrainer(seeded_phi(0), [], 1, learning_rate=1e-3, weight_decay=5e-4, lr_scheduler=schedule)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "scheduler before optimizer" warning is expected and silenced
        resumed.skip_lr_schedule(2)
    assert resumed.optimizer.param_groups[0]["lr"] == rates[2]
    resumed.step()
    assert resumed.optimizer.param_groups[0]["lr"] == rates[3]
