"""recipes/meta_train.py and mp_hub.training: task splits, the reference algorithm, world-size independence,
bit-exact resume, the saved φ and the typed errors. A tiny generated dataset, ResNet-20 on 8×8 images, CPU."""

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage
from safetensors.torch import load_file

from mp_hub import MetaPerturb
from mp_hub.data.loading import ImageTensors
from mp_hub.data.tasks import InfiniteBatches, TaskData, class_lists_hash, split_tasks
from mp_hub.errors import ConfigError, DataError, DistributedError
from mp_hub.training import MetaTrainer, TaskLearner, assign_tasks, check_in_sync, seeded_phi
from mp_hub.training import distributed as dist_module

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "meta_train.py"
STEPS = 4
COMMON = ["--num_tasks", "4", "--split_scheme", "halves", "--image_size", "8", "--per_device_train_batch_size", "8"]


def _load_recipe():
    spec = importlib.util.spec_from_file_location("meta_train_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe()


def _make_dataset(root: Path, classes: int = 8, per_class: int = 12, tasks=None) -> Path:
    """A Hub-layout folder (data/train-*.parquet) of tiny coloured 8×8 images, a label and a task column."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for c in range(classes):
        for _ in range(per_class):
            base = np.full((8, 8, 3), 30 * c % 255, np.int64)
            base[:4, :, c % 3] = 200
            images.append(PILImage.fromarray(np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)))
            labels.append(c)
    tasks = tasks if tasks is not None else [label // 2 for label in labels]
    features = Features(
        {
            "image": Image(),
            "label": ClassLabel(names=[f"c{i}" for i in range(classes)]),
            "task": ClassLabel(names=[f"t{i}" for i in range(max(tasks) + 1)]),
            "note": Value("string"),
        }
    )
    data = {"image": images, "label": labels, "task": tasks, "note": ["x"] * len(labels)}
    (root / "data").mkdir(parents=True)
    Dataset.from_dict(data, features=features).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("meta_train")


@pytest.fixture(scope="module")
def dataset(workdir) -> Path:
    return _make_dataset(workdir / "tiny")


def _run(dataset: Path, workdir: Path, out: str, *extra: str) -> Path:
    argv = ["--dataset_dir", str(dataset), "--cache_dir", str(workdir / "cache"), *COMMON]
    return recipe.main([*argv, "--output_dir", str(workdir / out), *extra])


@pytest.fixture(scope="module")
def full_run(dataset, workdir) -> Path:
    """One process, 4 tasks, 4 steps, checkpoints every 2 steps (only the last kept)."""
    extra = ["--max_train_steps", str(STEPS), "--checkpointing_steps", "2", "--checkpoints_total_limit", "1"]
    return _run(dataset, workdir, "full", *extra)


def _phi(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


# --- task splits -------------------------------------------------------------------------------------------


def test_disjoint_split_is_deterministic_class_disjoint_and_covers_the_data():
    labels = np.repeat(np.arange(10), 6)
    specs = split_tasks(labels, seed=3, num_tasks=3, split_scheme="disjoint")
    again = split_tasks(labels, seed=3, num_tasks=3, split_scheme="disjoint")
    assert [s.classes for s in specs] == [(0, 1, 2, 3), (4, 5, 6), (7, 8, 9)]
    for a, b in zip(specs, again):
        assert np.array_equal(a.train_rows, b.train_rows) and np.array_equal(a.valid_rows, b.valid_rows)
    rows = np.concatenate([np.concatenate([s.train_rows, s.valid_rows]) for s in specs])
    assert sorted(rows.tolist()) == list(range(len(labels)))  # every image in exactly one task and one half
    for s in specs:
        assert set(labels[s.train_rows]) <= set(s.classes) and set(labels[s.valid_rows]) <= set(s.classes)
    other = split_tasks(labels, seed=4, num_tasks=3, split_scheme="disjoint")
    assert not np.array_equal(other[0].train_rows, specs[0].train_rows)
    assert class_lists_hash(other) == class_lists_hash(specs)  # the classes do not depend on the seed


def test_halves_split_swaps_train_and_valid_within_each_group():
    labels = np.repeat(np.arange(8), 5)
    specs = split_tasks(labels, seed=0, num_tasks=4, split_scheme="halves")
    again = split_tasks(labels, seed=0, num_tasks=4, split_scheme="halves")
    assert all(np.array_equal(a.train_rows, b.train_rows) for a, b in zip(specs, again))
    assert [s.index for s in specs] == [0, 1, 2, 3]
    assert specs[0].classes == specs[1].classes == (0, 1, 2, 3) and specs[2].classes == (4, 5, 6, 7)
    for a, b in (specs[0:2], specs[2:4]):
        assert np.array_equal(a.train_rows, b.valid_rows) and np.array_equal(a.valid_rows, b.train_rows)
        assert len(a.train_rows) == 10 and not set(a.train_rows) & set(a.valid_rows)
    assert not set(specs[0].classes) & set(specs[2].classes)


def test_task_column_split():
    labels = np.repeat(np.arange(6), 4)
    task_ids = labels // 3
    specs = split_tasks(labels, seed=0, task_ids=task_ids, task_names=["greek", "thai"])
    assert [(s.name, s.classes) for s in specs] == [("greek", (0, 1, 2)), ("thai", (3, 4, 5))]
    assert all(len(s.train_rows) == 6 and len(s.valid_rows) == 6 for s in specs)
    with pytest.raises(ConfigError, match="disagrees"):
        split_tasks(labels, seed=0, task_ids=task_ids, num_tasks=3)


def test_split_errors():
    with pytest.raises(DataError, match="3 classes, fewer than the 4 tasks"):
        split_tasks(np.repeat(np.arange(3), 4), seed=0, num_tasks=4, split_scheme="disjoint")
    with pytest.raises(ConfigError, match="even"):
        split_tasks(np.repeat(np.arange(6), 4), seed=0, num_tasks=3, split_scheme="halves")
    with pytest.raises(DataError, match="task 1 .* 0 train and 1 valid"):
        split_tasks(np.array([0, 0, 1]), seed=0, task_ids=np.array([0, 0, 1]))


def test_tasks_are_spread_in_contiguous_blocks():
    assert [list(assign_tasks(10, 4, r)) for r in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert [list(assign_tasks(4, 2, r)) for r in range(2)] == [[0, 1], [2, 3]]
    with pytest.raises(DistributedError, match="3 processes for 2 tasks"):
        assign_tasks(2, 3, 0)


def test_batches_shuffle_per_epoch_and_resume():
    batches = InfiniteBatches(10, 4, torch.Generator().manual_seed(0))
    first_epoch = torch.cat([next(batches), next(batches)])
    assert len(set(first_epoch.tolist())) == 8  # full batches only; the last 2 of the epoch are dropped
    state = copy.deepcopy(batches.state_dict())
    ahead = [next(batches) for _ in range(5)]
    batches.load_state_dict(state)
    assert all(torch.equal(a, next(batches)) for a in ahead)


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


# --- the recipe ---------------------------------------------------------------------------------------------


def test_output_loads_and_has_provenance_card_and_curves(full_run):
    phi = MetaPerturb.from_pretrained(full_run)
    assert phi.num_parameters() == 82
    prov = phi.config.provenance
    assert prov["num_tasks"] == 4 and prov["steps"] == STEPS and prov["world_size"] == 1
    assert prov["split_scheme"] == "halves" and prov["source_dataset"] == "tiny" and prov["architecture"]
    assert prov["site_channels"] == [16, 64] and len(prov["task_classes_sha256"]) == 16
    assert (full_run / "meta_train_curves.png").stat().st_size > 1000
    card = (full_run / "README.md").read_text()
    assert "meta_train_curves.png" in card and "recipes/meta_train.py" in card and "--num_tasks 4" in card
    assert not torch.equal(phi.channel_scale.fc.weight, seeded_phi(0).channel_scale.fc.weight)
    # --checkpoints_total_limit 1: only the last complete checkpoint is kept
    assert sorted(p.name for p in (full_run / "checkpoints").iterdir()) == ["step_4"]
    assert (full_run / "checkpoints" / "step_4" / "COMPLETE").is_file()


def test_stopped_and_resumed_run_is_bit_equal(full_run, dataset, workdir):
    _run(dataset, workdir, "resumed", "--max_train_steps", "2", "--checkpointing_steps", "2")
    out = _run(
        dataset, workdir, "resumed", "--max_train_steps", str(STEPS), "--resume_from_checkpoint", "latest",
        "--checkpointing_steps", "2",
    )  # fmt: skip
    reference, resumed = _phi(full_run), _phi(out)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    for t in range(4):  # θ_t, BN and site buffers, optimizers and generators too
        name = f"checkpoints/step_{STEPS}/task_{t:04d}.pt"
        a, b = (torch.load(d / name, weights_only=True) for d in (full_run, out))
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        assert torch.equal(a["noise"], b["noise"])
    history = json.loads((out / f"checkpoints/step_{STEPS}/trainer_state.json").read_text())["history"]
    assert [row["step"] for row in history] == [1, 2, 3, 4]


def test_two_processes_match_one_process(full_run, dataset, workdir):
    """`accelerate launch` with 2 CPU processes × 2 tasks ends with the φ of 1 process × 4 tasks."""
    out = workdir / "two_procs"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(RECIPE), "--dataset_dir", str(dataset), "--cache_dir", str(workdir / "cache"), *COMMON,
        "--max_train_steps", str(STEPS), "--sync_check_steps", "1", "--output_dir", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert summary and summary[-1]["world_size"] == 2, result.stdout[-2000:]
    reference, two = _phi(full_run), _phi(out)
    diff = max((reference[k] - two[k]).abs().max().item() for k in reference)
    assert diff <= 1e-6, f"max abs difference {diff}"
    assert MetaPerturb.from_pretrained(out).config.provenance["world_size"] == 2


def test_yaml_config_gives_defaults_and_flags_override(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("dataset_dir: somewhere\nnum_tasks: 6\nlearning_rate: 0.01\noutput_dir: out\n")
    args = recipe.parse_args(["--config", str(config), "--num_tasks", "2"])
    assert (args.dataset_dir, args.num_tasks, args.learning_rate) == ("somewhere", 2, 0.01)
    config.write_text("num_task: 6\n")
    with pytest.raises(ConfigError, match="unknown keys \\['num_task'\\]"):
        recipe.parse_args(["--config", str(config)])


@pytest.mark.parametrize(
    ("extra", "error", "match"),
    [
        (["--label_column_name", "fine_label"], DataError, r"no label column 'fine_label'; its columns are \["),
        (["--image_column_name", "note"], DataError, "not images"),
        (["--task_column", "topic"], DataError, "no task column 'topic'"),
        (["--num_tasks", "10", "--split_scheme", "disjoint"], DataError, "8 classes, fewer than the 10 tasks"),
        (["--output_dir", ""], ConfigError, "--output_dir is required"),
    ],
)
def test_bad_input_is_a_typed_error(dataset, workdir, extra, error, match):
    with pytest.raises(error, match=match):
        _run(dataset, workdir, "bad", "--max_train_steps", "1", *extra)


def test_a_task_without_valid_images_is_a_data_error(tmp_path):
    # task 3 has a single image: after the train/valid cut its train half is empty
    tasks = [0] * 40 + [1] * 40 + [2] * 15 + [3]
    data = _make_dataset(tmp_path / "uneven", tasks=tasks)
    with pytest.raises(DataError, match=r"task 3 \(t3\) has 0 train and 1 valid"):
        _run(data, tmp_path, "bad", "--task_column", "task", "--num_tasks", "4", "--max_train_steps", "1")


def test_push_to_hub_uploads_the_saved_folder_in_one_commit(dataset, workdir, monkeypatch):
    import mp_hub.hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id))

        def upload_folder(self, *, repo_id, folder_path, commit_message, token=None):
            calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path)), commit_message))

    monkeypatch.setattr(mp_hub.hub, "HfApi", FakeApi)
    _run(dataset, workdir, "pushed", "--max_train_steps", "1", "--push_to_hub", "--hub_model_id", "me/phi")
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]  # one commit
    files = ["README.md", "config.json", "meta_train_curves.png", "model.safetensors"]
    assert calls[1][1:3] == ("me/phi", files)
